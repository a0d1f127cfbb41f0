"""Where a peftlab run spends its time: wall-clock timers around the functions of each stage, installed for one
run and removed after (used by `python -m peftlab.bench --profile`).

Each phase counts its own time only: a phase called inside another (collation inside fetching a batch) is taken
out of the outer one. Evaluation, checkpoint saving and reloading count as wholes (their forward passes and
collation are theirs, not training's). Simple timers rather than torch.profiler: the question is which stage,
not which kernel, and they cost next to nothing.
"""

from __future__ import annotations

import functools
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import accelerate
import transformers
from accelerate.optimizer import AcceleratedOptimizer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.trainer_callback import CallbackHandler

from . import building, data, evaluation, models, run_report, training
from .methods.base import Method
from .tasks import get_task


class PhaseTimer:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter = Counter()
        self._stack: list[list] = []  # [phase, start, seconds of nested phases, whole]
        self._patches: list[tuple] = []

    def timed(self, fn, phase: str, whole: bool = False):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if self._stack and self._stack[-1][3]:  # inside a phase that counts as a whole
                return fn(*args, **kwargs)
            frame = [phase, time.perf_counter(), 0.0, whole]
            self._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                self._stack.pop()
                elapsed = time.perf_counter() - frame[1]
                self.seconds[phase] += elapsed - frame[2]
                self.calls[phase] += 1
                if self._stack:
                    self._stack[-1][2] += elapsed
        return wrapper

    def wrap(self, owner, name: str, phase: str, whole: bool = False) -> None:
        """Time owner.name (a module function or a class's method) until restore()."""
        had_own = name in vars(owner)
        original = getattr(owner, name)
        self._patches.append((owner, name, original if had_own else None))
        setattr(owner, name, self.timed(original, phase, whole))

    def wrap_result(self, owner, name: str, phase: str) -> None:
        """Time calls of what owner.name returns (e.g. the collator a task's collator() builds)."""
        original = getattr(owner, name)
        self._patches.append((owner, name, original if name in vars(owner) else None))
        setattr(owner, name, functools.wraps(original)(lambda *a, **k: self.timed(original(*a, **k), phase)))

    def restore(self) -> None:
        for owner, name, original in reversed(self._patches):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._patches.clear()


def profile_run(run: Callable[[], int], task_name: str) -> dict:
    """Call run() (a peftlab run in this process, returning its exit code) with timers on every stage; what is not
    inside another stage counts as start-up. {phase: seconds, calls}."""
    task = get_task(task_name)
    timer = PhaseTimer()
    for owner, name, phase, whole in [
        (data, "load_splits", "read data files", False),
        (models, "load_tokenizer", "load tokenizer", False),
        (models, "weights_fingerprint", "sha256 of the base weights (for the record)", False),
        (task, "prepare", "tokenize", False),
        (building, "predict_memory", "memory prediction", False),
        (building, "build_model", "load model + wrap with method", False),
        (transformers.Trainer, "train", "Trainer loop (rest: scheduler, zero_grad, bookkeeping)", False),
        (transformers.Trainer, "get_train_dataloader", "build the training data loader (sampler)", False),
        (transformers.Trainer, "create_optimizer_and_scheduler", "create optimizer", False),
        (accelerate.Accelerator, "prepare", "accelerate prepare (model, optimizer, loader)", False),
        (transformers.Trainer, "get_batch_samples", "fetch batch (dataset rows)", False),
        (training.InOrderEvalTrainer, "compute_loss", "forward + loss", False),
        (accelerate.Accelerator, "backward", "backward", False),
        (transformers.Trainer, "_clip_grad_norm", "gradient clipping", False),
        (AcceleratedOptimizer, "step", "optimizer step", False),
        (CallbackHandler, "call_event", "callbacks: logging, progress, timing", False),
        (transformers.Trainer, "evaluate", "evaluation (forward, metrics)", True),
        (evaluation, "score_split", "scoring the reported split once, after training", True),
        (transformers.Trainer, "_save_checkpoint", "checkpoint save", True),
        (transformers.Trainer, "_load_best_model", "best-model reload", True),
        *[(cls, "save", "save adapter + tokenizer", True) for cls in _subclasses(Method) if "save" in vars(cls)],
        (PreTrainedTokenizerBase, "save_pretrained", "save adapter + tokenizer", True),
        (run_report, "write", "report", True),
    ]:
        timer.wrap(owner, name, phase, whole)
    timer.wrap_result(task, "collator", "collate (pad) batch")
    try:
        started = time.perf_counter()
        code = timer.timed(run, "start-up: recipe, environment, run directory")()
        total = time.perf_counter() - started
    finally:
        timer.restore()
    return {"exit_code": code, "total_seconds": total,
            "phases": {phase: {"seconds": s, "calls": timer.calls[phase]} for phase, s in timer.seconds.items()}}


def _subclasses(cls) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found

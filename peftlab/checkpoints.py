"""Checkpoints a run can be resumed from, and stopping training without losing work.

Trainer's `resume_from_checkpoint` restores the weights, optimizer, scheduler, RNG states, step counter,
log history, best-checkpoint record and (with `restore_callback_states_from_checkpoint`) the state of
callbacks such as early stopping and our step timer. This module adds what it lacks:
- which checkpoint is complete: Trainer writes a checkpoint in place, so a kill during a save leaves a
  partial folder that its own `get_last_checkpoint` would pick;
- a data order that depends only on the seed and the epoch, so skipping the trained batches of the
  current epoch lands on the same batches (Trainer's length-grouped sampler draws from the global RNG);
- checkpoints every `train.checkpoint_steps` steps, independent of evaluations;
- Ctrl-C / SIGTERM: finish the step, save a checkpoint, stop (a second signal stops at once);
- a non-finite loss stops training before the optimizer step, so the last checkpoint stays good.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import shutil
import signal
import sys
import threading
from pathlib import Path

import torch
from transformers import TrainerCallback

from . import distributed
from .errors import PeftlabError
from .rundir import write_json

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE = "trainer_state.json"  # Trainer writes it last, after weights, optimizer, scheduler and RNG states


class TrainingStopped(KeyboardInterrupt):
    """Training stopped on request after saving a checkpoint."""


def rng_files(processes: int) -> list[str]:
    """The RNG state files Trainer writes into a checkpoint: one per process when there are several."""
    return ["rng_state.pth"] if processes == 1 else [f"rng_state_{rank}.pth" for rank in range(processes)]


def _complete_step(folder: Path, processes: int) -> int | None:
    match = CHECKPOINT.match(folder.name)
    if not (match and folder.is_dir()):
        return None
    try:
        state = json.loads((folder / STATE).read_text())
    except (OSError, ValueError):
        return None
    step = int(match.group(1))
    # each process writes its own RNG file, the other ones possibly after the main one wrote trainer_state.json
    rng_complete = all((folder / name).is_file() for name in rng_files(processes))
    return step if state.get("global_step") == step and rng_complete else None


def complete_checkpoints(folder: Path, processes: int | None = None) -> list[Path]:
    """Complete checkpoints, oldest first, of a run trained by `processes` processes (default: as many as now)."""
    processes = processes or distributed.world_size()
    found = [(step, path) for path in (folder.iterdir() if folder.is_dir() else [])
             if (step := _complete_step(path, processes)) is not None]
    return [path for _, path in sorted(found)]


def last_checkpoint(folder: Path, processes: int | None = None) -> Path | None:
    """The newest complete checkpoint to resume from. One saved at the very last step is skipped: Trainer
    would run a step past the end when resuming there (it checks for the end only after a step), and the
    run only had its final evaluation left."""
    states = [(path, json.loads((path / STATE).read_text())) for path in complete_checkpoints(folder, processes)]
    usable = [path for path, state in states if state["global_step"] < state["max_steps"]]
    return usable[-1] if usable else None


def prepare_resume(folder: Path, processes: int | None = None) -> Path | None:
    """Remove partial checkpoints (a save cut short) of a run trained by `processes` processes and point the
    best-checkpoint record at this folder (it holds the path the first process used, which differs when resumed
    from another directory)."""
    keep = set(complete_checkpoints(folder, processes))
    for path in (folder.iterdir() if folder.is_dir() else []):
        if CHECKPOINT.match(path.name) and path not in keep:
            shutil.rmtree(path, ignore_errors=True)
    checkpoint = last_checkpoint(folder, processes)
    if checkpoint is not None:
        state_file = checkpoint / STATE
        state = json.loads(state_file.read_text())
        best = state.get("best_model_checkpoint")
        if best and (folder / Path(best).name).is_dir():
            state["best_model_checkpoint"] = str(folder / Path(best).name)
            write_json(state_file, state)
    return checkpoint


class EpochSeededSampler(torch.utils.data.Sampler):
    """Runs a sampler (Trainer's LengthGroupedSampler) from a generator seeded with seed + epoch: the order of
    an epoch no longer depends on how much global randomness was drawn before it, so a resumed run that
    skips the batches it already trained sees exactly the batches the uninterrupted run saw."""

    def __init__(self, sampler, seed: int):
        self.sampler, self.seed, self.epoch = sampler, seed, 0

    def set_epoch(self, epoch: int) -> None:  # called by accelerate's data loader before each epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        self.sampler.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(self.sampler)


def require_finite(loss: torch.Tensor, trainer) -> None:
    """Called after each backward pass, before the optimizer step: a NaN/inf loss stops the run with the
    weights of the last step intact."""
    # every process takes the same decision, or the others would wait forever at the next gradient all-reduce
    if not distributed.any_process(not torch.isfinite(loss).all()):
        return
    last = last_checkpoint(Path(trainer.args.output_dir))
    kept = f"the last good checkpoint is kept: {last}" if last else "no checkpoint had been saved yet"
    value = loss.item() if not torch.isfinite(loss).all() else "non-finite in another process"
    raise PeftlabError(f"training loss became {value} at step {trainer.state.global_step + 1} "
                       f"(lr {trainer.args.learning_rate:g}): stopped before updating the weights; {kept}; "
                       "lower train.lr, check the data for extreme values, or keep train.max_grad_norm set")


class CheckpointControl(TrainerCallback):
    """Extra checkpoints every `every` steps, and a stop with a checkpoint when asked (by a signal)."""

    def __init__(self, every: int | None):
        self.every = every
        self.stop_reason: str | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed control state carries the should_save flag of the moment it was saved; it would save an
        # extra checkpoint at the first step.
        control.should_save = False
        return control

    def on_step_end(self, args, state, control, **kwargs):
        # a signal may reach only some processes (or between their steps): all stop at the same step
        if distributed.any_process(self.stop_reason is not None) and self.stop_reason is None:
            self.stop_reason = "a signal to another process"
        if (self.every and state.global_step % self.every == 0) or self.stop_reason:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.stop_reason:  # the checkpoint is on disk: leave train() without its end-of-training work
            raise TrainingStopped(f"stopped by {self.stop_reason} after saving checkpoint-{state.global_step}")
        return control


@contextlib.contextmanager
def stop_signals(control: CheckpointControl):
    """Ctrl-C (SIGINT) and SIGTERM ask `control` to checkpoint and stop; a second one stops at once."""
    if threading.current_thread() is not threading.main_thread():  # signals can only be handled there
        yield
        return

    def second(signum, frame):
        raise KeyboardInterrupt

    def first(signum, frame):
        control.stop_reason = signal.Signals(signum).name
        sys.stderr.write(f"\n{control.stop_reason}: saving a checkpoint after this step, then stopping "
                         "(press Ctrl-C again to stop at once)\n")
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, second)

    previous = {sig: signal.signal(sig, first) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train(trainer, checkpoint: Path | None) -> None:
    """trainer.train(), resumable and stoppable. Checkpoint files other than safetensors are read by Trainer
    with torch.load(weights_only=True); one holding anything but tensors is refused, never executed."""
    control = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, CheckpointControl))
    try:
        with stop_signals(control):
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except BaseException as err:
        # Trainer skips on_train_end when training raises; callbacks still get it (the progress bar gives the
        # terminal back its cursor).
        trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
        if isinstance(err, pickle.UnpicklingError):
            raise PeftlabError(f"checkpoint {checkpoint}: a file holds more than tensors, refused to load it "
                               f"({str(err).splitlines()[0][:120]}); delete that checkpoint folder to resume "
                               "from an earlier one") from None
        raise

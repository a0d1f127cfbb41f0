"""Memory of a training run, measured by phase; recorded in metrics.json under "memory".

model_state_bytes      weights as stored (every parameter and buffer; a bitsandbytes 4/8-bit weight with its
                       quantization state), gradients and optimizer state, summed over the tensors themselves, each
                       storage once, right after the first optimizer step (when AdamW's moments exist).
train_peak_bytes       peak of live tensor memory during training steps (forward, backward, optimizer step).
                       GPU: torch.cuda.max_memory_allocated, reset when a step begins and read when it ends.
                       CPU: torch's CPU allocator reports each allocation and free (bytes as requested) to the profiler
                       when it runs with profile_memory=True. A profiled window opens when the model's forward begins
                       and closes when the step ends; its peak is the live bytes at the opening, counted exactly (the
                       model state tensors above plus the batch's input tensors), plus the highest running sum of the
                       window's allocations and frees. Frees of tensors allocated before a window are not reported
                       (the allocator does not know their size): only small leftovers of the previous step can be
                       missed that way, which errs upward. The profiler slows a step, so only candidate steps are
                       profiled: the first two (the first creates the optimizer state, the second is the first whose
                       forward and backward run next to it) and every step whose batch has more tokens or a longer
                       sequence than any profiled before (with random batch order about ln(steps) steps).
train_peak_rss_bytes   peak resident memory of the process while training, over the steps the profiler above did not
                       watch (its event buffers, which grow with every operation, are not the training's memory;
                       those steps' peak is profiled_steps_peak_rss_bytes; train_rss_largest_batch is the largest
                       batch of the others: where it is smaller than largest_batch, the RSS saw less; None where the
                       profiler watched every step, as in a run of two steps), and
eval_peak_rss_bytes    eval_peak_rss_bytes while evaluating (Trainer's evaluations between steps, and anything the
                       pipeline wraps in `meter.during("eval", ...)`, e.g. the causal LM's generation before and after
                       training). Linux resets a process's peak RSS
                       (VmHWM) to its current RSS when "5" is written to /proc/self/clear_refs: each phase boundary
                       reads VmHWM, credits it to the phase that ends, returns freed memory to the system (glibc's
                       malloc_trim, levers.release_freed_memory) and resets. Where clear_refs is not writable the
                       record says so and both figures are the whole process's peak so far (getrusage).
"""

from __future__ import annotations

import contextlib
import gc
import os
import resource

import torch
from transformers import TrainerCallback

from .levers import release_freed_memory
from .measure import stored_tensors

CLEAR_REFS, STATUS = "/proc/self/clear_refs", "/proc/self/status"


def _storage_bytes(tensors, seen: set) -> int:
    """Bytes of the tensors' storages, each storage once (tied weights, views, shared quantization state)."""
    total = 0
    for tensor in tensors:
        if tensor is None or tensor.device.type == "meta":
            continue
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def model_state(model, optimizer) -> dict:
    """{"weights", "gradients", "optimizer", "total"} in bytes, from the tensors."""
    seen: set = set()
    weights = _storage_bytes((t for p in model.parameters() for t in stored_tensors(p)), seen) \
        + _storage_bytes(model.buffers(), seen)
    gradients = _storage_bytes((p.grad for p in model.parameters()), seen)
    state = optimizer.state.values() if optimizer is not None else ()
    moments = _storage_bytes((t for s in state for t in s.values() if isinstance(t, torch.Tensor)), seen)
    return {"weights": weights, "gradients": gradients, "optimizer": moments, "total": weights + gradients + moments}


class LiveTensorWindow:
    """Peak of live CPU tensor bytes between start(live_bytes) and stop(), from the profiler's allocator events."""

    def __init__(self):
        self._profiler = None
        self._live = 0

    def start(self, live_bytes: int) -> None:
        from torch.profiler import ProfilerActivity, profile

        self._live = live_bytes
        self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _quiet_stderr():
            self._profiler.start()

    @property
    def active(self) -> bool:
        return self._profiler is not None

    def stop(self, between: tuple[str, str] | None = None) -> int:
        """The peak; with `between=(first, last)`, the highest rise of live bytes from `mark(first)` to `mark(last)`."""
        with _quiet_stderr():
            self._profiler.stop()
        events = self._profiler.profiler.kineto_results.events()
        self._profiler = None
        peak = self._peak(events, between)
        # the profiler's objects sit in reference cycles: left to a later collection, their event buffers stayed
        # resident through the next steps and counted as their training RSS
        del events
        gc.collect()
        return peak

    def _peak(self, events, between: tuple[str, str] | None) -> int:
        allocations = sorted((e.start_ns(), e.nbytes()) for e in events
                             if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
        marks = {e.name(): e.start_ns() for e in events if between and e.name() in between}
        begin, end = (marks.get(between[0], 0), marks.get(between[1], float("inf"))) if between else (0, float("inf"))
        running = highest = at_begin = 0
        for time, nbytes in allocations:  # nbytes < 0 for a free
            if time > end:
                break
            running += nbytes
            if time <= begin:
                at_begin = highest = running
            highest = max(highest, running)
        return self._live + highest - at_begin

    @staticmethod
    def mark(name: str) -> None:
        """A named instant in the window's timeline (for stop(between=...)): hooks inside autograd's backward cannot
        start or stop a profiler (the engine fixed its thread state when backward began), but can leave a mark."""
        with torch.profiler.record_function(name):
            pass


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints two lines to stderr each time a profiler starts and stops; a run profiles several steps and
    those lines say nothing to its user (file descriptor 2 is redirected: they come from C++)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class PeakRSS:
    """Peak resident memory per phase, reset at each phase boundary through /proc/self/clear_refs."""

    def __init__(self):
        self.peaks: dict[str, int] = {}
        self.highest = 0  # of every reading, whatever the phase: the whole process's peak (resets hide it from getrusage)
        self.current: str | None = None
        self.resettable = _reset_peak()
        self.method = "VmHWM reset via /proc/self/clear_refs" if self.resettable else \
            "getrusage ru_maxrss: whole process so far (clear_refs not writable), not per phase"

    def switch(self, phase: str | None, release: bool = True) -> None:
        """End the current phase (its peak since it began is credited to it) and begin `phase`. Freed memory goes
        back to the system in between, if `release` (levers.release_freed_memory, when that lever is on): the next
        phase's peak then starts from what is live, not from the blocks the last one freed and glibc still holds."""
        reading = _peak_rss()
        self.highest = max(self.highest, reading)
        if self.current is not None:
            self.peaks[self.current] = max(self.peaks.get(self.current, 0), reading)
        if release:
            release_freed_memory()
        if self.resettable:
            _reset_peak()
        self.current = phase

    def whole_run(self) -> int:
        """The process's peak resident memory since it started: the kernel's peak (VmHWM, and getrusage's ru_maxrss,
        which reads it) restarts at every reset, so the highest of all readings."""
        return max(self.highest, _peak_rss())

    @contextlib.contextmanager
    def phase(self, name: str):
        before = self.current
        self.switch(name)
        try:
            yield
        finally:
            self.switch(before)


def _reset_peak() -> bool:
    try:
        with open(CLEAR_REFS, "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    try:
        with open(STATUS) as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class MemoryMeter(TrainerCallback):
    """Trainer callback measuring what the module docstring describes. Phases: a step (on_step_begin ..
    on_step_end) is training; from a step's end, an evaluation (seen by its first prediction step) until
    on_evaluate is evaluation; saving and logging belong to neither."""

    def __init__(self, trim_every: int | None = 1):
        self.rss = PeakRSS()
        self.trim_every = trim_every  # freed memory back to the system every this many steps too (Train.trim_memory)
        self.state_bytes: dict | None = None
        self.train_peak = 0
        self.profiled_steps: list[int] = []
        self._window = LiveTensorWindow()
        self._largest = (0, 0)  # (tokens, sequence length) of the largest batch profiled so far
        self._largest_unprofiled = (0, 0)  # ... and of those trained without the profiler (their RSS is training's)
        self._unprofiled_forwards = 0
        self._in_step = False
        self._hook = None
        self._optimizer = None

    # ---- training steps
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._optimizer = optimizer
        if not torch.cuda.is_available() and self._hook is None:
            self._hook = model.register_forward_pre_hook(self._maybe_open_window, with_kwargs=True)
        self.rss.switch(None)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.rss.switch("train", release=self._trim_due(state))
        self._in_step = True
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def _maybe_open_window(self, module, args, kwargs):
        if not (self._in_step and module.training) or self._window.active:
            return
        inputs = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
        ids = kwargs.get("input_ids", inputs[0] if inputs else None)
        size = (ids.numel(), ids.shape[-1]) if ids is not None else (0, 0)
        if len(self.profiled_steps) >= 2 and not (size[0] > self._largest[0] or size[1] > self._largest[1]):
            self._largest_unprofiled = max(self._largest_unprofiled, size)
            self._unprofiled_forwards += 1
            return
        self._largest = max(self._largest, size)
        live = model_state(module, self._optimizer)["total"] + _storage_bytes(inputs, set())
        self.rss.switch("profiled", release=self.trim_every == 1)  # the profiler's own memory is not the training's
        self._window.start(live)

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.state_bytes is None:  # the first: the optimizer state exists now, gradients still do
            self.state_bytes = model_state(model, optimizer)

    def on_step_end(self, args, state, control, **kwargs):
        self._in_step = False
        profiled = self._window.active
        if profiled:
            self.train_peak = max(self.train_peak, self._window.stop())
            self.profiled_steps.append(state.global_step)
        elif torch.cuda.is_available():
            self.train_peak = max(self.train_peak, torch.cuda.max_memory_allocated())
        # the profiler's freed event buffers go back whatever trim_every says: kept, the next steps' RSS would hold them
        self.rss.switch("between", release=self._trim_due(state) or profiled)

    def _trim_due(self, state) -> bool:
        """At a step's end (global_step counts it) and the next one's beginning, every trim_every steps."""
        return self.trim_every is not None and state.global_step % self.trim_every == 0

    # ---- evaluation between steps
    def on_prediction_step(self, args, state, control, **kwargs):
        if self.rss.current != "eval":  # an evaluation begins: from what is live, whatever the steps left freed
            self.rss.switch("eval")

    def on_evaluate(self, args, state, control, **kwargs):
        self.rss.current = "eval"  # also an evaluation that had no prediction steps
        self.rss.switch("between")

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.rss.switch(None)

    def during(self, phase: str, fn):
        """fn, whose calls count to `phase` ("eval": the causal LM's generation before and after training)."""
        def measured(*args, **kwargs):
            with self.rss.phase(phase):
                return fn(*args, **kwargs)
        return measured

    def record(self, prediction: dict | None = None, at_largest: dict | None = None,
               at_rss_batch: dict | None = None) -> dict:
        """The "memory" object of metrics.json; `prediction` is plan.predict's before training (worst batch), if one
        was made, and `at_largest` its plan for the largest batch trained, which the errors compare with
        (`at_rss_batch`: for the largest batch of the steps whose RSS counts, if that differs)."""
        out = {
            "model_state_bytes": self.state_bytes,
            "train_peak_bytes": self.train_peak or None,
            "train_peak_measured_by": "torch.cuda.max_memory_allocated" if torch.cuda.is_available() else
            "profiler allocator events (CPU)",
            "profiled_steps": self.profiled_steps,
            "largest_batch": self.largest_batch(),
            # with every step profiled, the "train" phase saw only the moments before each forward began
            "train_peak_rss_bytes": self.rss.peaks.get("train")
            if torch.cuda.is_available() or self._unprofiled_forwards else None,
            "train_rss_largest_batch": self.largest_batch(profiled=False),
            "profiled_steps_peak_rss_bytes": self.rss.peaks.get("profiled"),
            "eval_peak_rss_bytes": self.rss.peaks.get("eval"),
            "rss_measured_by": self.rss.method,
        }
        if prediction is not None:
            out |= {"predicted_train_peak_bytes": prediction["predicted_train_peak_bytes"],
                    "predicted_train_peak_rss_bytes": prediction["predicted_train_peak_rss_bytes"]}
            out |= plan_errors(at_largest or prediction, out, at_rss_batch)
        return out

    def largest_batch(self, profiled: bool = True) -> dict:
        """The largest batch the profiled steps met (or the others): its tokens (rows x sequence) and sequence
        length."""
        tokens, sequence = self._largest if profiled else self._largest_unprofiled
        return {"tokens": tokens, "sequence": sequence}


def compared_plan(memory: dict) -> dict:
    """The plan a run's measured peak is compared with: for the largest batch trained (records made before that plan
    existed kept only the worst batch's, made before training)."""
    return memory.get("plan_at_largest_batch") or {"train_peak_bytes": memory.get("predicted_train_peak_bytes"),
                                                   "train_peak_rss_bytes": memory.get("predicted_train_peak_rss_bytes")}


def plan_errors(plan: dict, measured: dict, rss_plan: dict | None = None) -> dict:
    """The plan for the batch measured (its rows and sequence), next to the measurement, with its error in %;
    `rss_plan`: the plan for the batch the RSS was measured at, where that differs."""
    def error(predicted, actual):
        return None if not (predicted and actual) else 100 * (predicted - actual) / actual

    rss_plan = rss_plan or plan
    live, rss = plan.get("predicted_train_peak_bytes"), rss_plan.get("predicted_train_peak_rss_bytes")
    return {"plan_at_largest_batch": {"batch": plan.get("batch"), "sequence": plan.get("sequence"),
                                      "train_peak_bytes": live, "train_peak_rss_bytes": rss,
                                      "rss_batch": rss_plan.get("batch"), "rss_sequence": rss_plan.get("sequence")},
            "plan_error_percent": error(live, measured["train_peak_bytes"]),
            "plan_rss_error_percent": error(rss, measured["train_peak_rss_bytes"])}

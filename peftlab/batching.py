"""Dynamic batching for a served model: one worker thread owns the model, and requests that arrive within a short
window are predicted together: in one model call whatever their adapters when the adapters can share a batch, else
grouped per adapter (peftlab.serving is the server around it).

Why one thread: the model is shared by every adapter and the adapter is chosen by setting it on the model
(set_adapter), which two threads must not do at once; a fast tokenizer also refuses to be used from two threads
at once ("Already borrowed"). So tokenizing, switching adapters and the forward passes all happen here, and the
web server's event loop only waits on futures.

Mixed batches: peft runs a batch whose rows use different adapters (forward with adapter_names=[...], one name per
row) for LoRA only, not DoRA, IA3, prefix or prompt tuning; the server says when its adapters can (`mixed`). Otherwise
a batch per adapter: with requests spread over K adapters, each model call then holds about 1/K of the rows."""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial


@dataclass
class Job:
    adapter: str
    inputs: list  # rows to predict; for a call, none
    call: Callable | None = None  # run alone in the worker thread (a generation), its return value the result
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)


MIXED = "(mixed)"  # the adapter label of a batch that mixes adapters


class Batcher:
    """predict(adapter, rows) -> one result per row, run in the worker thread on batches of up to `max_batch` rows
    from requests that arrived within `window_s` of the first; observe(adapter, rows, queue_seconds) is told of each
    batch (queue_seconds: how long each of its requests waited). max_batch=1 turns batching off. With `mixed`, a
    batch of several adapters is one call, predict(names, rows) with one adapter name per row, observed as MIXED."""

    def __init__(self, predict: Callable, max_batch: int, window_s: float, observe: Callable = lambda *a: None,
                 mixed: bool = False):
        self.predict, self.max_batch, self.window_s, self.observe = predict, max_batch, window_s, observe
        self.mixed = mixed
        self.jobs: queue.Queue = queue.Queue()
        self.held: collections.deque = collections.deque()  # taken from the queue, run next (did not fit a batch)
        self.thread = threading.Thread(target=self._loop, name="peftlab-model", daemon=True)
        self.thread.start()

    def predict_rows(self, adapter: str, rows: list) -> Future:
        return self._submit(Job(adapter, rows))

    def call(self, adapter: str, function: Callable) -> Future:
        return self._submit(Job(adapter, [], function))

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()

    def _submit(self, job: Job) -> Future:
        self.jobs.put(job)
        return job.future

    def _next(self, timeout: float | None = None):
        if self.held:
            return self.held.popleft()
        return self.jobs.get(timeout=timeout) if timeout is None or timeout > 0 else self.jobs.get_nowait()

    def _loop(self) -> None:
        while (job := self._next()) is not None:
            if job.call is not None:
                self._settle(job, job.call)
            else:
                self._run(self._gather(job))
        self.held.clear()

    def _gather(self, first: Job) -> list[Job]:
        """The first request and those that come within the window, up to max_batch rows; the first that does not
        fit (or is not a prediction) waits for the next round."""
        batch, rows, deadline = [first], len(first.inputs), time.perf_counter() + self.window_s
        while rows < self.max_batch:
            try:
                job = self._next(deadline - time.perf_counter())
            except queue.Empty:
                break
            if job is None or job.call is not None or rows + len(job.inputs) > self.max_batch:
                self.held.append(job)
                break
            batch.append(job)
            rows += len(job.inputs)
        return batch

    def _groups(self, batch: list[Job]) -> dict:
        """Jobs per model call, keyed by what predict is given: the adapter, or for a mixed call a name per row."""
        if self.mixed and len({job.adapter for job in batch}) > 1:
            return {tuple(job.adapter for job in batch for _ in job.inputs): batch}
        groups: dict[str, list[Job]] = {}
        for job in batch:
            groups.setdefault(job.adapter, []).append(job)
        return groups

    def _run(self, batch: list[Job]) -> None:
        for adapter, jobs in self._groups(batch).items():
            started = time.perf_counter()
            self.observe(adapter if isinstance(adapter, str) else MIXED, sum(len(j.inputs) for j in jobs),
                         [started - j.queued for j in jobs])
            try:
                results = self.predict(adapter, [row for j in jobs for row in j.inputs])
            except Exception as err:
                if len(jobs) == 1:
                    jobs[0].future.set_exception(err)
                else:  # one request's bad input fails the batch: each again alone, so only that request gets it
                    for job in jobs:
                        self._settle(job, partial(self.predict, job.adapter, job.inputs))
                continue
            for job in jobs:
                job.future.set_result(results[:len(job.inputs)])
                results = results[len(job.inputs):]

    @staticmethod
    def _settle(job: Job, function: Callable) -> None:
        try:
            job.future.set_result(function())
        except Exception as err:  # handed to the request waiting on it
            job.future.set_exception(err)

"""Memory measurement: exact live-tensor peaks, model state from the tensors, RSS separated by phase."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerCallback

from peftlab import load_recipe, measure, memory
from peftlab.building import build_model, prepare_inputs
from peftlab.plan import current_rss
from peftlab.tasks import metrics_for
from peftlab.training import build_trainer

from conftest import make_bert, pinned_freed_heap, run_recipe, write_recipe

MB = 1_000_000


def test_live_window_counts_known_allocations_exactly():
    window = memory.LiveTensorWindow()
    before = torch.ones(1000)  # allocated before the window: its bytes are given as live at the start
    window.start(live_bytes=before.nbytes)
    a = torch.empty(1_000_000)  # 4 MB
    b = torch.empty(250_000)  # 1 MB
    del a
    c = torch.empty(2_000_000, dtype=torch.float64)  # 16 MB, while b is live: the peak
    del b, c
    d = torch.empty(1_000_000)  # 4 MB after the peak: does not raise it
    assert window.stop() == before.nbytes + 17 * MB
    del d



def test_live_window_frees_the_profiler_when_it_stops():
    """The profiler's objects sit in reference cycles; left to a later collection, their event buffers stayed resident
    through the next training steps and were counted as their RSS."""
    import gc
    import weakref

    gc.disable()  # no collection of its own may run between the window's stop and the check
    try:
        window = memory.LiveTensorWindow()
        window.start(live_bytes=0)
        profiler = weakref.ref(window._profiler)
        torch.ones(1000).sum()
        window.stop()
        assert profiler() is None
    finally:
        gc.enable()


def test_live_window_between_marks_counts_the_rise_above_the_first_mark():
    window = memory.LiveTensorWindow()
    window.start(live_bytes=0)
    kept = torch.empty(2_000_000)  # 8 MB before the first mark: the level the rise is counted from
    big = torch.empty(5_000_000)  # 20 MB, freed before the mark: a peak outside the marks
    del big
    window.mark("first")
    a = torch.empty(1_000_000)  # 4 MB
    del kept  # frees below the first mark's level count too
    b = torch.empty(3_000_000)  # 12 MB: live bytes are now 4 - 8 + 12 = 8 MB above the first mark's level
    window.mark("last")
    c = torch.empty(10_000_000)  # 40 MB after the last mark: not counted
    assert window.stop(between=("first", "last")) == 8 * MB
    del a, b, c

def test_model_state_is_exact_for_full_fine_tuning(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(input_ids=torch.tensor([[2, 5, 3]]), labels=torch.tensor([1])).loss.backward()
    optimizer.step()
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    buffers = sum(b.nbytes for b in model.buffers())
    state = memory.model_state(model, optimizer)
    # float32 weights, float32 gradients, AdamW's two float32 moments and one float32 step count per tensor
    assert state == {"weights": 4 * n + buffers, "gradients": 4 * n, "optimizer": 8 * n + 4 * len(params),
                     "total": 16 * n + buffers + 4 * len(params)}


class BigEvaluation(TrainerCallback):
    """An evaluation that holds 400 MB (written, so resident) for one prediction step."""

    def on_prediction_step(self, args, state, control, **kwargs):
        big = torch.ones(100 * MB)
        assert big.sum() > 0


def _trainer(tmp_path, model_dir, data_dir, meter, method="LoRA(r=4, alpha=8, target=['query', 'value'])"):
    recipe = load_recipe(write_recipe(tmp_path / "r.py", model_dir, method=method,
                                      train="epochs=1, lr=5e-3, batch_size=16, max_steps=4, evals_per_epoch=2"))
    inputs = prepare_inputs(recipe, data_dir)
    model = build_model(recipe, inputs.task, inputs.resolved, inputs.labels)
    return build_trainer(recipe, inputs.task, model, inputs.tokenizer, inputs.train, inputs.selection,
                         tmp_path / "ckpt", metrics_for(inputs.task, inputs.selection, inputs.splits.selection,
                                                        inputs.labels, recipe), inputs.labels, meter)


def test_evaluation_memory_is_not_training_memory(tmp_path, tiny_bert, data_dir):
    meter = memory.MemoryMeter()
    trainer = _trainer(tmp_path, tiny_bert, data_dir, meter)
    trainer.add_callback(BigEvaluation())
    trainer.train()
    record = meter.record()
    if not meter.rss.resettable:
        pytest.skip("/proc/self/clear_refs is not writable here: RSS peaks are not per phase")
    assert record["eval_peak_rss_bytes"] > record["train_peak_rss_bytes"] + 300 * MB
    assert record["train_peak_bytes"] >= record["model_state_bytes"]["total"] > 0
    assert record["profiled_steps"][0] == 1


def test_generation_wrapped_as_evaluation_counts_there():
    meter = memory.MemoryMeter()
    meter.rss.switch("train")
    meter.during("eval", lambda: torch.ones(100 * MB).sum())()
    meter.rss.switch(None)
    if meter.rss.resettable:
        assert meter.rss.peaks["eval"] > meter.rss.peaks["train"] + 300 * MB


def test_memory_a_phase_freed_counts_to_it_not_to_the_next(monkeypatch):
    """200 MiB of heap blocks freed in one phase, pinned by the last one so that glibc keeps them resident: the next
    phase starts after they are released, so its peak is not the freeing phase's (the training step before an
    evaluation)."""
    from peftlab import levers

    monkeypatch.delenv("PEFTLAB_DISABLE", raising=False)
    peaks = memory.PeakRSS()
    if not (peaks.resettable and "malloc_trim" in levers.allocator_settings()):
        pytest.skip("RSS peaks are not per phase here, or the allocator is not glibc's")
    peaks.switch("train")
    pin = pinned_freed_heap()  # noqa: F841 (kept alive: it pins the freed blocks)
    peaks.switch("eval")
    torch.ones(1000).sum()
    peaks.switch(None)
    assert peaks.peaks["train"] > peaks.peaks["eval"] + 150 * 2**20


@pytest.mark.parametrize("trim_every,step,returned", [(1, 1, True), (None, 1, False), (4, 3, False), (4, 8, True)])
def test_steps_return_freed_memory_only_when_told(monkeypatch, trim_every, step, returned):
    """A step frees 200 MiB of pinned heap blocks (as in the test above): they go back to the system when it ends
    where steps are trimmed every step, or every 4 steps and it is the 8th; otherwise glibc keeps them for the next
    step (Train.trim_memory), until the evaluation's phase boundary returns them."""
    from peftlab import levers

    monkeypatch.delenv("PEFTLAB_DISABLE", raising=False)
    meter = memory.MemoryMeter(trim_every=trim_every)
    if "malloc_trim" not in levers.allocator_settings():
        pytest.skip("the allocator is not glibc's")
    meter.on_step_begin(None, SimpleNamespace(global_step=step - 1), None)
    pin = pinned_freed_heap()  # noqa: F841 (kept alive: it pins the freed blocks)
    held = current_rss()
    meter.on_step_end(None, SimpleNamespace(global_step=step), None)
    assert (held - current_rss() > 150 * 2**20) is returned
    meter.on_prediction_step(None, None, None)  # an evaluation begins: always from what is live
    assert held - current_rss() > 150 * 2**20


def test_whole_run_peak_survives_the_phase_resets():
    """Each phase boundary restarts the kernel's peak (and getrusage's, which reads it); the whole run's peak is kept
    apart, at least every phase's."""
    peaks = memory.PeakRSS()
    if not peaks.resettable:
        pytest.skip("/proc/self/clear_refs is not writable here: nothing resets the peak")
    peaks.switch("train")
    big = torch.ones(100 * MB)  # 400 MB, written: resident
    assert big.sum() > 0
    del big
    peaks.switch("eval")
    peaks.switch(None)
    assert peaks.whole_run() >= peaks.peaks["train"] > peaks.peaks["eval"] + 300 * MB
    assert measure.peak_memory()["peak_rss_bytes"] < peaks.peaks["train"] - 300 * MB  # what getrusage says now
    assert measure.peak_memory(peaks.whole_run())["peak_rss_bytes"] == peaks.whole_run()


@pytest.mark.parametrize("trim_every", [1, None])
def test_training_rss_leaves_out_the_steps_the_profiler_watched(monkeypatch, trim_every):
    """The live-tensor profiler's buffers grow over the steps it watches (here: 300 MiB of heap blocks held while it
    runs, pinned as in the tests above); those steps' RSS is recorded apart, and the training RSS is the other
    steps', with the largest batch among them. The buffers' freed blocks go back to the system when a profiled step
    ends even where steps are not trimmed, or the next steps' RSS would hold them."""
    held, pins, start, stop = [], [], memory.LiveTensorWindow.start, memory.LiveTensorWindow.stop

    def hold(self, live):
        held.extend(torch.ones(16384) for _ in range(4800))  # 64 KiB each: heap, below glibc's mmap threshold
        pins.append(torch.ones(16384))
        start(self, live)

    monkeypatch.setattr(memory.LiveTensorWindow, "start", hold)
    monkeypatch.setattr(memory.LiveTensorWindow, "stop", lambda self, *a: (held.clear(), stop(self, *a))[1])
    monkeypatch.delenv("PEFTLAB_DISABLE", raising=False)
    model = torch.nn.Embedding(10, 8).train()
    model.forward = lambda input_ids: torch.nn.Embedding.forward(model, input_ids)
    meter = memory.MemoryMeter(trim_every)
    if not meter.rss.resettable or torch.cuda.is_available():
        pytest.skip("RSS peaks are not per phase here, or steps are measured by CUDA's allocator")
    meter.on_train_begin(None, None, None, model=model)
    for step, rows in enumerate([2, 2, 2, 1], start=1):
        meter.on_step_begin(None, SimpleNamespace(global_step=step - 1), None)
        model(input_ids=torch.zeros(rows, 3, dtype=torch.long)).sum().backward()
        meter.on_step_end(None, SimpleNamespace(global_step=step), None)
    meter.on_train_end(None, None, None)
    record = meter.record()
    assert record["profiled_steps"] == [1, 2]
    assert record["largest_batch"] == {"tokens": 6, "sequence": 3}
    assert record["train_rss_largest_batch"] == {"tokens": 6, "sequence": 3}  # steps 3 and 4
    assert record["profiled_steps_peak_rss_bytes"] > record["train_peak_rss_bytes"] + 250 * MB


def test_no_training_rss_where_the_profiler_watched_every_step():
    """Two steps, both profiled: the "train" phase saw only the moments before each forward, so no training RSS is
    recorded (it was the model's resident size, below the live-tensor peak)."""
    model = torch.nn.Embedding(10, 8).train()
    model.forward = lambda input_ids: torch.nn.Embedding.forward(model, input_ids)
    meter = memory.MemoryMeter()
    if torch.cuda.is_available():
        pytest.skip("steps are measured by CUDA's allocator")
    meter.on_train_begin(None, None, None, model=model)
    for step in (1, 2):
        meter.on_step_begin(None, SimpleNamespace(global_step=step - 1), None)
        model(input_ids=torch.zeros(2, 3, dtype=torch.long)).sum().backward()
        meter.on_step_end(None, SimpleNamespace(global_step=step), None)
    meter.on_train_end(None, None, None)
    record = meter.record()
    assert record["profiled_steps"] == [1, 2] and record["profiled_steps_peak_rss_bytes"] > 0
    assert record["train_peak_rss_bytes"] is None
    assert record["train_rss_largest_batch"] == {"tokens": 0, "sequence": 0}


def test_run_records_the_memory_object(tmp_path, data_dir):
    bert = make_bert(tmp_path / "bert", hidden=64)
    run = run_recipe(tmp_path, write_recipe(tmp_path / "r.py", bert, train="epochs=1, lr=5e-3, batch_size=16"),
                     data_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    mem = metrics["memory"]
    assert set(mem["model_state_bytes"]) == {"weights", "gradients", "optimizer", "total"}
    phases = [mem[k] for k in ("train_peak_rss_bytes", "profiled_steps_peak_rss_bytes", "eval_peak_rss_bytes")]
    assert metrics["peak_rss_bytes"] >= max(p for p in phases if p) > 0
    assert mem["train_peak_bytes"] >= mem["model_state_bytes"]["total"]
    assert mem["predicted_train_peak_bytes"] > 0 and mem["plan_error_percent"] is not None
    # the error is the plan's for the largest batch trained (rows x sequence), not the worst batch's
    at, largest = mem["plan_at_largest_batch"], mem["largest_batch"]
    assert (at["batch"], at["sequence"]) == (largest["tokens"] // largest["sequence"], largest["sequence"])
    assert mem["plan_error_percent"] == pytest.approx(
        100 * (at["train_peak_bytes"] - mem["train_peak_bytes"]) / mem["train_peak_bytes"])
    assert at["train_peak_bytes"] <= mem["predicted_train_peak_bytes"]


@pytest.mark.parametrize("method", ["FullFineTuning()", "LoRA(r=8, alpha=16, target='all-linear')"])
def test_plan_predicts_the_measured_training_peak(tmp_path, data_dir, method):
    bert = make_bert(tmp_path / "bert", hidden=128)
    run = run_recipe(tmp_path, write_recipe(tmp_path / "r.py", bert, method=method,
                                            train="epochs=1, lr=5e-3, batch_size=64, precision='fp32'"), data_dir)
    mem = json.loads((run / "metrics.json").read_text())["memory"]
    assert abs(mem["plan_error_percent"]) <= 10, mem

"""Experiment tracking through Trainer's integrations: TensorBoard event files in the run directory (the default when
tensorboard is installed), none with report_to=[], tracker names passed on to TrainingArguments, and a resumed run's
TensorBoard log without the steps it trains again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from peftlab import resume, run_report, rundir, tracking
from peftlab.errors import PeftlabError
from peftlab.recipe import load_recipe, recipe_to_dict
from peftlab.training import training_arguments

from conftest import run_recipe, write_recipe

needs_tensorboard = pytest.mark.skipif(not tracking.is_tensorboard_available(),
                                       reason="tensorboard is not installed (pip install -e '.[tensorboard]')")
TRAIN = "epochs=1, lr=5e-3, batch_size=16, max_steps=6, logging_steps=2, evals_per_epoch=1"


def scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@needs_tensorboard
def test_tensorboard_by_default_writes_into_the_run_directory_and_the_report_links_it(tmp_path, tiny_bert, data_dir):
    run_dir = run_recipe(tmp_path, write_recipe(tmp_path / "r.py", tiny_bert, train=TRAIN), data_dir)
    log_dir = run_dir / "tensorboard"
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1  # one writer, kept after the checkpoints went
    history = json.loads((run_dir / "log_history.json").read_text())
    logged = [(e["step"], e["loss"]) for e in history if "loss" in e and "eval_loss" not in e]
    assert [step for step, _ in scalars(log_dir, "train/loss")] == [step for step, _ in logged] == [2, 4, 6]
    assert [v for _, v in scalars(log_dir, "train/loss")] == pytest.approx([v for _, v in logged], rel=1e-6)
    assert [step for step, _ in scalars(log_dir, "eval/accuracy")] == [e["step"] for e in history if "eval_loss" in e]
    assert json.loads((run_dir / "environment.json").read_text())["report_to"] == ["tensorboard"]
    report = (run_dir / "report.md").read_text()
    assert f"tensorboard --logdir {log_dir}" in report and "[`tensorboard/`](tensorboard)" in report
    copy = (tmp_path / "reports" / "tiny.md").read_text()  # links the run's folder from where the copy lies
    link = copy.split("[`tensorboard/`](")[1].split(")")[0]
    assert (tmp_path / "reports" / link).resolve() == log_dir.resolve()


def test_report_to_none_writes_no_event_files(tmp_path, tiny_bert, data_dir):
    recipe = write_recipe(tmp_path / "r.py", tiny_bert, train=TRAIN + ", report_to=[]")
    run_dir = run_recipe(tmp_path, recipe, data_dir, "--reports-dir", "")
    assert not (run_dir / "tensorboard").exists() and not list(run_dir.rglob("events.out.tfevents.*"))
    assert json.loads((run_dir / "environment.json").read_text())["report_to"] == []
    assert "## Tracking" not in (run_dir / "report.md").read_text()


def test_tracker_names_reach_training_arguments(tmp_path, tiny_bert, monkeypatch):
    def arguments(*overrides):
        recipe = load_recipe(write_recipe(tmp_path / "r.py", tiny_bert, train=TRAIN), list(overrides))
        return training_arguments(recipe, tmp_path / "out", 64, "accuracy", run_name="tiny-20260101-000000")

    args = arguments("train.report_to=wandb,mlflow")
    assert args.report_to == ["wandb", "mlflow"] and args.run_name == "tiny-20260101-000000"
    assert arguments("train.report_to=").report_to == []
    monkeypatch.setattr(tracking, "is_tensorboard_available", lambda: True)
    assert arguments().report_to == ["tensorboard"]  # "auto"
    monkeypatch.setattr(tracking, "is_tensorboard_available", lambda: False)
    assert arguments("train.report_to=auto").report_to == []


def test_unknown_or_missing_trackers_are_refused(tmp_path, tiny_bert, monkeypatch):
    path = write_recipe(tmp_path / "r.py", tiny_bert, train=TRAIN)
    with pytest.raises(PeftlabError, match=r"unknown tracker 'tensorbord' \(did you mean 'tensorboard'\?\)"):
        load_recipe(path, ["train.report_to=tensorbord"])
    with pytest.raises(PeftlabError, match="a tracker is named twice"):
        load_recipe(path, ["train.report_to=wandb,wandb"])
    monkeypatch.setattr(tracking, "get_available_reporting_integrations", lambda: ["tensorboard"])
    tracking.check_installed(["tensorboard"])
    with pytest.raises(PeftlabError, match="wandb is not installed here .*pip install wandb"):
        tracking.check_installed(["tensorboard", "wandb"])


def test_trackers_may_change_on_resume_and_the_report_names_every_one(tmp_path, tiny_bert):
    """Trackers change how a run is logged, not what it trains: a resume may name others, and its record says so."""
    path = write_recipe(tmp_path / "r.py", tiny_bert, train=TRAIN)
    run = tmp_path / "runs" / "tiny-20260101-000000"
    rundir.write_json(run / "recipe.json", recipe_to_dict(load_recipe(path)))
    assert resume.recipe_differences(run, load_recipe(path, ["train.report_to=wandb"])) == []
    assert resume.recipe_differences(run, load_recipe(path, ["train.lr=0.1"])) != []
    rundir.write_json(run / "environment.json", {"command": "first", "report_to": ["tensorboard"], "versions": {}})
    env = resume.environment(resume.Resume(run, None), {"command": "again", "report_to": ["wandb"], "versions": {}})
    assert env["report_to"] == ["tensorboard"] and env["resumed"][0]["report_to"] == ["wandb"]
    section = run_report._tracking(str(run), env)
    assert f"tensorboard --logdir {run / 'tensorboard'}" in section and "Also reported to wandb, as run " \
        "`tiny-20260101-000000`" in section
    assert run_report._tracking(str(run), {"report_to": []}) is None


def _state(step: int, main: bool = True) -> TrainerState:
    state = TrainerState(global_step=step)
    state.is_world_process_zero = main
    return state


def _log(callback, args, steps, offset: float = 0.0, main: bool = True) -> None:
    control = TrainerControl()
    callback.on_train_begin(args, _state(steps[0] - 1, main), control)
    for step in steps:
        callback.on_log(args, _state(step, main), control, logs={"loss": step + offset})
    callback.on_train_end(args, _state(steps[-1], main), control)


@needs_tensorboard
def test_a_resumed_run_replaces_what_the_stopped_one_logged_after_its_checkpoint(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[])
    log_dir = tmp_path / "run" / "tensorboard"
    _log(tracking.RunDirTensorBoard(log_dir), args, range(1, 9))  # stopped after step 8, checkpoint at step 5
    _log(tracking.RunDirTensorBoard(log_dir), args, range(6, 11), offset=100)  # resumed from step 5
    assert scalars(log_dir, "train/loss") == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 106), (7, 107), (8, 108),
                                              (9, 109), (10, 110)]


@needs_tensorboard
def test_only_the_main_process_writes_events(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[])
    _log(tracking.RunDirTensorBoard(tmp_path / "tensorboard"), args, range(1, 4), main=False)
    assert not os.path.exists(tmp_path / "tensorboard")

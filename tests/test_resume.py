"""Resume after a crash on a tiny BERT: SIGKILL mid-epoch and Ctrl-C both end, after --resume, with the metrics of
an uninterrupted run; partial checkpoints are skipped; a checkpoint holding more than tensors is refused unread."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from peftlab import checkpoints, models, rundir
from peftlab import run as run_cli
from peftlab.recipe import Model

from conftest import run_recipe, write_recipe

REPO = Path(__file__).resolve().parent.parent
# 256 examples / batch 16 = 16 steps per epoch, 32 in all; a checkpoint every 5 steps and an evaluation every 8.
# The tiny BERT keeps its dropout, so the resumed run must also restore the RNG to match.
TRAIN = "epochs=2, lr=1e-2, batch_size=16, logging_steps=4, evals_per_epoch=2, checkpoint_steps=5"


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, tiny_bert):
    tmp = tmp_path_factory.mktemp("resume")
    return write_recipe(tmp / "r.py", tiny_bert, method="LoRA(r=4, alpha=8, target='all-linear')", train=TRAIN)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, recipe, data_dir):
    return run_recipe(tmp_path_factory.mktemp("whole"), recipe, data_dir, "--reports-dir", "")


def _args(recipe, data_dir, runs: Path, *extra: str) -> list[str]:
    return [str(recipe), "--data-dir", str(data_dir), "--runs-dir", str(runs), "--reports-dir", "", *extra]


def _evaluations(run_dir: Path) -> list[tuple]:
    history = json.loads((run_dir / "log_history.json").read_text())
    return [(e["step"], e["eval_loss"], e["eval_accuracy"]) for e in history if "eval_loss" in e]


def _assert_same_result(resumed: Path, uninterrupted: Path) -> None:
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (uninterrupted, resumed))
    assert second["task_metrics"] == first["task_metrics"]  # exactly, not approximately
    assert second["steps"] == first["steps"] == 32 and second["best_step"] == first["best_step"]
    assert _evaluations(resumed) == _evaluations(uninterrupted)  # every evaluation along the way, too
    assert rundir.status(resumed) == "finished" and not (resumed / "checkpoints").exists()


# Runs peftlab.run, but holds still after optimizer step argv[2] (23: checkpoint-20 is on disk, 7 steps into epoch 2)
# so the test can SIGKILL it at a known point: nothing in the process gets a chance to clean up.
KILLABLE = textwrap.dedent("""\
    import sys, time
    from pathlib import Path
    from peftlab import run, training
    marker, stop_at = Path(sys.argv[1]), int(sys.argv[2])
    step_end = training.StepTimer.on_step_end
    def on_step_end(self, args, state, control, **kwargs):
        step_end(self, args, state, control, **kwargs)
        if state.global_step == stop_at:
            marker.write_text("ready")
            time.sleep(600)
    training.StepTimer.on_step_end = on_step_end
    sys.exit(run.main(sys.argv[3:]))
    """)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, recipe, data_dir, uninterrupted, capsys):
    runs, marker = tmp_path / "runs", tmp_path / "ready"
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(marker), "23", *_args(recipe, data_dir, runs)],
                                env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 600
        while not marker.exists():
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the training subprocess did not reach step 23"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    (run_dir,) = runs.iterdir()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"  # as the killed process left it
    status = rundir.read_status(run_dir)
    assert status["state"] == "interrupted" and f"process {proc.pid} ended" in status["error"]
    assert [p.name for p in checkpoints.complete_checkpoints(run_dir / "checkpoints")][-1] == "checkpoint-20"

    assert run_cli.main(_args(recipe, data_dir, runs, "--resume")) == 0  # finds the interrupted run by itself
    assert f"{run_dir} (resuming from checkpoint-20)" in capsys.readouterr().err
    assert list(runs.iterdir()) == [run_dir]  # finished in the same directory
    _assert_same_result(run_dir, uninterrupted)
    env_record = json.loads((run_dir / "environment.json").read_text())
    assert [r["from_step"] for r in env_record["resumed"]] == [20] and "--resume" in env_record["resumed"][0]["command"]
    assert "Resumed from step 20" in (run_dir / "report.md").read_text()


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path, recipe, data_dir, uninterrupted, capsys,
                                                         monkeypatch):
    from peftlab import training

    step_end = training.StepTimer.on_step_end

    def ctrl_c_at_step_13(self, args, state, control, **kwargs):
        step_end(self, args, state, control, **kwargs)
        if state.global_step == 13:
            os.kill(os.getpid(), signal.SIGINT)  # as the terminal sends it on Ctrl-C

    monkeypatch.setattr(training.StepTimer, "on_step_end", ctrl_c_at_step_13)
    runs, handler = tmp_path / "runs", signal.getsignal(signal.SIGINT)
    assert run_cli.main(_args(recipe, data_dir, runs)) == 130
    (run_dir,) = runs.iterdir()
    err = capsys.readouterr().err
    assert "SIGINT: saving a checkpoint after this step" in err and "after saving checkpoint-13" in err
    resume_line = next(line for line in err.splitlines() if line.startswith("resume with: "))
    assert resume_line.endswith(f"--resume {run_dir}")
    status = rundir.read_status(run_dir)
    assert status["state"] == "interrupted" and status["error"] == "stopped by SIGINT after saving checkpoint-13"
    assert (run_dir / "traceback.txt").is_file() and not (run_dir / "metrics.json").exists()
    assert checkpoints.last_checkpoint(run_dir / "checkpoints").name == "checkpoint-13"
    assert signal.getsignal(signal.SIGINT) is handler  # restored after training

    monkeypatch.setattr(training.StepTimer, "on_step_end", step_end)
    assert run_cli.main(_args(recipe, data_dir, runs, "--resume", str(run_dir))) == 0
    _assert_same_result(run_dir, uninterrupted)


def _fake_checkpoint(folder: Path, step: int, max_steps: int = 48, best: str | None = None) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "rng_state.pth").write_bytes(b"")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": max_steps,
                                                         "best_model_checkpoint": best}))
    return path


def test_partial_checkpoints_are_skipped_and_removed(tmp_path):
    folder = tmp_path / "checkpoints"
    _fake_checkpoint(folder, 5)
    _fake_checkpoint(folder, 10, best="/elsewhere/checkpoints/checkpoint-5")  # saved by a process run elsewhere
    cut = _fake_checkpoint(folder, 15)
    (cut / "trainer_state.json").write_text('{"global_step": 15, "max_')  # killed while writing it
    (folder / "checkpoint-20").mkdir()  # killed before anything but the folder was written
    _fake_checkpoint(folder, 48)  # the final step: resuming there would train a step past the end
    assert [p.name for p in checkpoints.complete_checkpoints(folder)] == ["checkpoint-5", "checkpoint-10",
                                                                            "checkpoint-48"]
    chosen = checkpoints.prepare_resume(folder)
    assert chosen.name == "checkpoint-10"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-10", "checkpoint-48", "checkpoint-5"]
    state = json.loads((chosen / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(folder / "checkpoint-5")  # points at this run directory now


def test_checkpoints_of_several_processes_need_every_rng_state(tmp_path):
    """With N processes Trainer writes rng_state_<rank>.pth, each process its own, the others possibly after the main
    one wrote trainer_state.json: complete only with all N."""
    folder = tmp_path / "checkpoints"
    for step in (5, 10):
        path = _fake_checkpoint(folder, step)
        (path / "rng_state.pth").rename(path / "rng_state_0.pth")
        if step == 5:
            (path / "rng_state_1.pth").write_bytes(b"")
    assert [p.name for p in checkpoints.complete_checkpoints(folder, processes=2)] == ["checkpoint-5"]
    assert checkpoints.prepare_resume(folder, processes=2).name == "checkpoint-5"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-5"]


class _Payload:
    """Unpickling this creates a file: what a planted pickle would do with any code."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "code ran"))


def test_checkpoint_with_pickled_code_is_refused(tmp_path, recipe, data_dir, capsys):
    """Trainer reads rng_state.pth / optimizer.pt with torch.load(weights_only=True): code is never run."""
    from peftlab import training

    step_end = training.StepTimer.on_step_end

    def ctrl_c_at_step_5(self, args, state, control, **kwargs):
        step_end(self, args, state, control, **kwargs)
        if state.global_step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    training.StepTimer.on_step_end = ctrl_c_at_step_5
    try:
        runs = tmp_path / "runs"
        assert run_cli.main(_args(recipe, data_dir, runs)) == 130
    finally:
        training.StepTimer.on_step_end = step_end
    (run_dir,) = runs.iterdir()
    target = tmp_path / "pwned"
    rng_state = run_dir / "checkpoints" / "checkpoint-5" / "rng_state.pth"
    rng_state.write_bytes(pickle.dumps({"python": _Payload(target)}))
    capsys.readouterr()
    assert run_cli.main(_args(recipe, data_dir, runs, "--resume", str(run_dir))) == 2
    err = capsys.readouterr().err
    assert re.search(r"checkpoint .*checkpoint-5: a file holds more than tensors, refused to load it", err)
    assert "delete that checkpoint folder" in err and not target.exists()
    assert rundir.status(run_dir) == "failed"
    pickle.loads(rng_state.read_bytes())  # what a plain torch.load / pickle.load would have done
    assert target.read_text() == "code ran"


def test_stale_running_status_reads_as_interrupted(tmp_path):
    rundir.set_status(tmp_path, "running")
    assert rundir.status(tmp_path) == "running"  # this very process
    record = json.loads((tmp_path / "status.json").read_text())
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    rundir.write_json(tmp_path / "status.json", record | {"pid": int(gone.stdout)})
    assert rundir.status(tmp_path) == "interrupted"
    rundir.write_json(tmp_path / "status.json", record | {"process_start": "1"})  # our pid, reused by another process
    assert rundir.status(tmp_path) == "interrupted"
    rundir.write_json(tmp_path / "status.json", record | {"host": "another-machine", "pid": int(gone.stdout)})
    assert rundir.status(tmp_path) == "running"  # cannot be checked from here: reported as recorded


def test_trust_remote_code_is_off_unless_asked_and_then_said(capsys):
    assert models.remote_code(Model("some/model")) is False
    assert capsys.readouterr().err == ""
    assert models.remote_code(Model("some/model", trust_remote_code=True)) is True
    assert "trust_remote_code=True — code from some/model will be executed" in capsys.readouterr().err


UNSAFE = (r"torch\.load\((?![^)]*weights_only=True)", r"pickle\.loads?\(", r"weights_only\s*=\s*False",
          r"trust_remote_code\s*=\s*True\b[,)]")


def test_no_unsafe_loading_in_the_package():
    """Weights are read from safetensors, or by torch.load(weights_only=True) inside transformers/peft."""
    for path in (REPO / "peftlab").rglob("*.py"):
        text = path.read_text()
        for unsafe in UNSAFE:
            assert not re.search(unsafe, text), f"{path.relative_to(REPO)} matches {unsafe}"

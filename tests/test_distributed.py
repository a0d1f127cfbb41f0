"""Two processes (accelerate launch, gloo on CPU) train the tiny recipe like one process does."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from peftlab import rundir, tracking

from conftest import run_recipe, write_recipe

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]  # every test launches two processes

# Records, per process, the token ids of every training batch and the labels every evaluation received.
PROBE = textwrap.dedent("""\
    import json, os, sys

    def install(path):
        from peftlab.tasks import classification
        from peftlab.training import InOrderEvalTrainer

        rank = os.environ.get("RANK", "0")
        records_for, training_step = classification.records_for, InOrderEvalTrainer.training_step

        def record(kind, value):
            with open(f"{path}.{kind}.{rank}", "a") as fh:
                fh.write(json.dumps(value) + "\\n")

        def recording_records_for(*args, **kwargs):  # every scoring: selection evaluations, the reported split
            records = records_for(*args, **kwargs)

            def recording(eval_pred):
                record("eval", {"labels": eval_pred.label_ids.tolist(), "logits": eval_pred.predictions.tolist()})
                return records(eval_pred)
            return recording

        def recording_step(self, model, inputs, *args, **kwargs):
            record("train", [[t for t, m in zip(ids, mask) if m] for ids, mask in
                             zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist())])
            return training_step(self, model, inputs, *args, **kwargs)

        classification.records_for, InOrderEvalTrainer.training_step = recording_records_for, recording_step

    if __name__ == "__main__":
        from peftlab import run

        install(os.environ["PROBE_FILE"])
        code = run.main(sys.argv[1:])
        import torch.distributed as dist  # left to interpreter exit, the group can abort the process (SIGABRT)
        with open(f"{os.environ['PROBE_FILE']}.group.{os.environ.get('RANK', '0')}", "w") as fh:
            fh.write(str(dist.is_initialized()))
        sys.exit(code)
    """)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(command: list[str], env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run in a session of its own, so that a hang guard timeout ends the launcher and its workers together."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def accelerate_launch(script: list[str], timeout: float = 900, **extra_env: str) -> subprocess.CompletedProcess:
    # --multi_gpu is accelerate's multi-process launcher (torchrun); without a GPU each process runs on the CPU, gloo.
    # One thread per process (two processes share this machine's cores); this checkout's peftlab on the path.
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                        "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])} | extra_env
    return launch([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(free_port()), *script], env, timeout)


def lines(path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.skipif(torch.cuda.is_available(), reason="two CPU processes; on a GPU machine accelerate would use nccl")
@pytest.mark.parametrize("loss", ["", ", loss=CrossEntropy(class_weights=[1.0, 3.0])"], ids=["model loss", "recipe loss"])
def test_two_processes_match_one_process(tmp_path, tiny_bert, data_dir, monkeypatch, loss):
    # float32 and no dropout (each process would draw its own masks), so that the runs differ only in summation
    # order (see the loss check at the end). A recipe loss takes Trainer's other path: divided by the global count
    # of labelled items, then scaled by the number of processes (training.training_arguments).
    recipe = write_recipe(tmp_path / "r.py", tiny_bert,
                          method="LoRA(r=4, alpha=8, dropout=0.0, target=['query', 'value'])",
                          train=f"epochs=2, lr=5e-3, batch_size=16, logging_steps=1, precision='fp32'{loss}")
    recipe.write_text(recipe.read_text().replace('labels=["negative", "positive"])',
                                                 'labels=["negative", "positive"], dropout=0.0)'))
    (tmp_path / "probe.py").write_text(PROBE)
    spec = importlib.util.spec_from_file_location("probe", tmp_path / "probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    from peftlab.tasks import classification
    from peftlab.training import InOrderEvalTrainer

    for owner, name in ((classification, "records_for"), (InOrderEvalTrainer, "training_step")):
        monkeypatch.setattr(owner, name, getattr(owner, name))  # put back after the test, whatever install does
    probe.install(str(tmp_path / "one"))
    single = run_recipe(tmp_path / "one", recipe, data_dir)

    runs, reports = tmp_path / "two" / "runs", tmp_path / "two" / "reports"
    launched = accelerate_launch([str(tmp_path / "probe.py"), str(recipe), "--data-dir", str(data_dir),
                                  "--runs-dir", str(runs), "--reports-dir", str(reports)],
                                  PROBE_FILE=str(tmp_path / "two"))
    assert launched.returncode == 0, launched.stderr[-3000:]

    # one run directory and one report, written by the main process only
    (run_dir,) = list(runs.iterdir())
    assert rundir.status(run_dir) == "finished"
    assert sorted(p.name for p in reports.iterdir()) == ["tiny", "tiny.json", "tiny.md"]  # tiny/: training curve
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    two, one = rundir.read_json(run_dir / "metrics.json"), rundir.read_json(single / "metrics.json")
    environment = rundir.read_json(run_dir / "environment.json")
    assert environment["processes"] == 2
    # the recorded command is the launcher's, as typed, not the one each worker process sees
    assert environment["command"] == shlex.join(["python", *launched.args[1:]])
    assert f"```\n{environment['command']}\n```" in (reports / "tiny.md").read_text()
    assert len(two["peak_rss_bytes_per_process"]) == 2
    # every process has left the process group by the time the run returns
    assert [(tmp_path / f"two.group.{rank}").read_text() for rank in (0, 1)] == ["False", "False"]

    # each step's global batch of 16 = the same examples as in one process, 8 on each process
    batches = {name: lines(tmp_path / f"{name}.train.0") for name in ("one", "two")}
    halves = lines(tmp_path / "two.train.1")
    assert len(batches["one"]) == len(batches["two"]) == len(halves) == one["steps"] == two["steps"] == 32
    for whole, first, second in zip(batches["one"], batches["two"], halves):
        assert len(first) == len(second) == 8 and sorted(first + second) == sorted(whole)

    # Every scoring (the selection split once per epoch, then the 64 validation examples once, after training) got
    # each of its examples exactly once, in the order one process has them (by length, speed.evaluation_order), on
    # both processes: same labels, and the same logits example by example (a duplicated, dropped or moved example
    # would shift them).
    rows = (data_dir / "sst2" / "validation.tsv").read_text().splitlines()[1:]
    single_evals = lines(tmp_path / "one.eval.0")
    assert len(single_evals) == 3
    assert sorted(single_evals[-1]["labels"]) == sorted(int(row.rsplit("\t", 1)[1]) for row in rows)
    for rank in (0, 1):
        evals = lines(tmp_path / f"two.eval.{rank}")
        assert [e["labels"] for e in evals] == [e["labels"] for e in single_evals]
        for mine, theirs in zip(evals, single_evals):
            assert len(mine["logits"]) == len(theirs["labels"])
            assert sum(mine["logits"], []) == pytest.approx(sum(theirs["logits"], []), abs=1e-5)

    # Same examples and weights at every step: the losses agree to float rounding (the two processes sum the
    # halves of each batch in another order, then all-reduce). A loss scaled by the number of processes, a wrong
    # batch, or a duplicated evaluation example would be off by orders of magnitude more.
    curves = [[e["loss"] for e in rundir.read_json(d / "log_history.json") if "loss" in e] for d in (single, run_dir)]
    assert curves[1] == pytest.approx(curves[0], abs=1e-5)
    assert two["task_metrics"]["loss"] == pytest.approx(one["task_metrics"]["loss"], abs=1e-5)
    assert two["task_metrics"]["accuracy"] == one["task_metrics"]["accuracy"]


# Rank 1 alone gets an infinite training loss at its third step.
POISON = textwrap.dedent("""\
    import os, sys

    from peftlab import run
    from peftlab.training import InOrderEvalTrainer

    compute_loss = InOrderEvalTrainer.compute_loss

    def poisoned(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        if model.training and os.environ.get("RANK") == "1" and self.state.global_step == 2:
            loss = loss * float("inf")
        return loss

    InOrderEvalTrainer.compute_loss = poisoned
    sys.exit(run.main(sys.argv[1:]))
    """)


@pytest.mark.skipif(torch.cuda.is_available(), reason="two CPU processes; on a GPU machine accelerate would use nccl")
def test_an_infinite_loss_in_one_process_stops_both(tmp_path, tiny_bert, data_dir):
    """Both processes must stop at the step where one of them saw a non-finite loss: the other one alone would go on
    and wait forever (or fail on a closed connection) at the next gradient all-reduce."""
    recipe = write_recipe(tmp_path / "r.py", tiny_bert, train="epochs=1, lr=1e-3, batch_size=16, precision='fp32'")
    (tmp_path / "poison.py").write_text(POISON)
    launched = accelerate_launch([str(tmp_path / "poison.py"), str(recipe), "--data-dir", str(data_dir),
                                  "--runs-dir", str(tmp_path / "runs"), "--reports-dir", ""])
    assert launched.returncode != 0
    (run_dir,) = list((tmp_path / "runs").iterdir())
    status = rundir.read_status(run_dir)  # written by the main process, whose own loss stayed finite
    assert status["state"] == "failed", status
    assert status["error"].startswith("training loss became non-finite in another process at step 3"), status


def varied_sums(n: int, seed: int) -> list[dict]:
    """Sums of 1-4 terms: answers of different lengths, so the two halves of a batch hold different token counts."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        terms = [rng.randint(0, 4) for _ in range(rng.randint(1, 4))]
        words = " plus ".join(map(str, terms))
        rows.append({"question": f"what is {words}", "answer": f"{words} = {sum(terms)}\n#### {sum(terms)}"})
    return rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="two CPU processes; on a GPU machine accelerate would use nccl")
def test_two_processes_train_a_causal_lm_like_one_process(tmp_path):
    """The causal-LM loss is a mean over response tokens: with two processes it must stay the mean over the whole
    batch's tokens (not the mean of each half's mean), and the before/after generations must run as in one process."""
    from test_causal_lm import make_llama, write_jsonl
    from test_causal_lm import write_recipe as write_causal_recipe

    llama = make_llama(tmp_path / "llama")
    data = tmp_path / "data"
    write_jsonl(data / "sums" / "train.jsonl", varied_sums(80, seed=1))
    write_jsonl(data / "sums" / "test.jsonl", varied_sums(6, seed=2))
    # random batches (no length buckets) and float32, so that the halves differ in token count and the runs only in
    # summation order
    recipe = write_causal_recipe(tmp_path / "r.py", llama,
                                 train="epochs=1, lr=1e-2, batch_size=8, eval_batch_size=8, logging_steps=1, "
                                       "group_by_length=False, precision='fp32'")
    single = run_recipe(tmp_path / "one", recipe, data)
    runs = tmp_path / "two" / "runs"
    launched = accelerate_launch(["-m", "peftlab.run", str(recipe), "--data-dir", str(data), "--runs-dir", str(runs),
                                  "--reports-dir", ""])
    assert launched.returncode == 0, launched.stderr[-3000:]
    (run_dir,) = list(runs.iterdir())

    curves = [[e["loss"] for e in rundir.read_json(d / "log_history.json") if "loss" in e] for d in (single, run_dir)]
    assert len(curves[0]) == len(curves[1]) == 8  # 64 training rows (16 held out) at batch 8
    assert curves[1] == pytest.approx(curves[0], abs=1e-5)
    one, two = (rundir.read_json(d / "metrics.json") for d in (single, run_dir))
    assert two["task_metrics"]["perplexity"] == pytest.approx(one["task_metrics"]["perplexity"], rel=1e-5)
    assert two["before"]["perplexity"] == pytest.approx(one["before"]["perplexity"], rel=1e-5)
    assert [g["generation"] for g in rundir.read_json(run_dir / "generations.json")["after"]] == \
        [g["generation"] for g in rundir.read_json(single / "generations.json")["after"]]



@pytest.mark.skipif(torch.cuda.is_available(), reason="two CPU processes; on a GPU machine accelerate would use nccl")
def test_two_processes_plan_once_and_write_nothing(tmp_path):
    """--plan launched with two processes: the main process chooses "auto" checkpointing and shares it (the
    processes join their group first), the plan prints once, and no run directory is made."""
    from test_causal_lm import make_llama, write_jsonl
    from test_causal_lm import write_recipe as write_causal_recipe

    llama = make_llama(tmp_path / "llama")
    data = tmp_path / "data"
    write_jsonl(data / "sums" / "train.jsonl", varied_sums(40, seed=1))
    write_jsonl(data / "sums" / "test.jsonl", varied_sums(6, seed=2))
    recipe = write_causal_recipe(tmp_path / "r.py", llama, train="epochs=1, lr=1e-2, batch_size=8, precision='fp32'")
    runs = tmp_path / "runs"
    launched = accelerate_launch(["-m", "peftlab.run", str(recipe), "--data-dir", str(data), "--runs-dir", str(runs),
                                  "--plan"])
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("predicted training peak (process RSS)") == 1, launched.stdout
    # the levers line goes to the console (stderr), where the library's warnings go too
    assert launched.stderr.count("gradient checkpointing off (auto:") == 1, launched.stderr[-3000:]
    assert not runs.exists()


# Rank 0 alone gets a Ctrl-C (SIGINT) at the end of step argv[1]; both processes must save and stop there.
CTRL_C = textwrap.dedent("""\
    import os, signal, sys
    from peftlab import run, training

    stop_at, step_end = int(sys.argv[1]), training.StepTimer.on_step_end

    def on_step_end(self, args, state, control, **kwargs):
        step_end(self, args, state, control, **kwargs)
        if state.global_step == stop_at and os.environ.get("RANK") == "0":
            os.kill(os.getpid(), signal.SIGINT)

    training.StepTimer.on_step_end = on_step_end
    sys.exit(run.main(sys.argv[2:]))
    """)


@pytest.mark.skipif(torch.cuda.is_available(), reason="two CPU processes; on a GPU machine accelerate would use nccl")
def test_two_processes_ctrl_c_then_resume_matches_uninterrupted(tmp_path, tiny_bert):
    """Each process writes its own RNG state (rng_state_<rank>.pth): the checkpoint must count as complete, and the
    resumed run (dropout on: each process's RNG restored) must end exactly where the uninterrupted one does."""
    from conftest import sentiment_rows, write_tsv

    data = tmp_path / "data"
    write_tsv(data / "sst2" / "train.tsv", sentiment_rows(64, seed=1))
    write_tsv(data / "sst2" / "validation.tsv", sentiment_rows(16, seed=2))
    recipe = write_recipe(tmp_path / "r.py", tiny_bert, train="epochs=2, lr=1e-2, batch_size=16, evals_per_epoch=2, "
                                                              "precision='fp32'")  # 8 steps, an evaluation every 2
    (tmp_path / "ctrl_c.py").write_text(CTRL_C)

    def launch_run(name: str, *extra: str) -> subprocess.CompletedProcess:
        return accelerate_launch([*extra, str(recipe), "--data-dir", str(data), "--runs-dir", str(tmp_path / name),
                                  "--reports-dir", ""])

    whole = launch_run("whole", "-m", "peftlab.run")
    assert whole.returncode == 0, whole.stderr[-3000:]
    stopped = launch_run("runs", str(tmp_path / "ctrl_c.py"), "3")
    assert stopped.returncode != 0 and "after saving checkpoint-3" in stopped.stderr, stopped.stderr[-3000:]
    (run_dir,) = list((tmp_path / "runs").iterdir())
    assert rundir.status(run_dir) == "interrupted"
    assert sorted(p.name for p in (run_dir / "checkpoints" / "checkpoint-3").glob("rng_state*")) == \
        ["rng_state_0.pth", "rng_state_1.pth"]

    resumed = launch_run("runs", "-m", "peftlab.run", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(resuming from checkpoint-3)" in resumed.stderr
    (uninterrupted,) = list((tmp_path / "whole").iterdir())
    first, second = (rundir.read_json(d / "metrics.json") for d in (uninterrupted, run_dir))
    assert second["task_metrics"] == first["task_metrics"] and second["steps"] == first["steps"] == 8
    history = [[(e["step"], e["eval_loss"]) for e in rundir.read_json(d / "log_history.json") if "eval_loss" in e]
               for d in (uninterrupted, run_dir)]
    assert history[1] == history[0] and len(history[0]) == 4
    assert [r["from_step"] for r in rundir.read_json(run_dir / "environment.json")["resumed"]] == [3]
    if tracking.is_tensorboard_available():  # TensorBoard logs from the main process only: one file per launch
        assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2


# The main process fails with an error that is not a PeftlabError while it creates the run directory for all.
CRASH_IN_SHARED_STEP = textwrap.dedent("""\
    import os, sys
    from peftlab import preflight, run

    def crash(*args, **kwargs):
        if os.environ.get("RANK") == "0":
            raise RuntimeError("boom in the shared step")

    preflight.run_checks = crash
    sys.exit(run.main(sys.argv[1:]))
    """)


@pytest.mark.skipif(torch.cuda.is_available(), reason="two CPU processes; on a GPU machine accelerate would use nccl")
def test_an_unexpected_error_on_the_main_process_reaches_the_others(tmp_path, tiny_bert, data_dir):
    """share_from_main: the other process waits in a broadcast for the main one's result; any exception there must
    reach it too (it would wait until killed), and each process exits reporting the main process's error."""
    recipe = write_recipe(tmp_path / "r.py", tiny_bert)
    (tmp_path / "crash.py").write_text(CRASH_IN_SHARED_STEP)
    launched = accelerate_launch([str(tmp_path / "crash.py"), str(recipe), "--data-dir", str(data_dir),
                                  "--runs-dir", str(tmp_path / "runs"), "--reports-dir", ""], timeout=240)
    assert launched.returncode != 0
    assert "RuntimeError: boom in the shared step" in launched.stderr  # the main process's own traceback
    # the other process raised it as well, instead of waiting until the launcher killed it
    assert "the main process failed: RuntimeError: boom in the shared step" in launched.stderr, launched.stderr[-3000:]
    assert not (tmp_path / "runs").exists()

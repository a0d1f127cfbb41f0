"""The whole pipeline on a tiny BERT: run -> run directory -> report -> reload -> predict."""

from __future__ import annotations

import json

import pytest
import torch

from peftlab import predict, rundir
from peftlab import run as run_cli
from peftlab.artifacts import load_trained

from conftest import make_bert, run_recipe, write_recipe


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert, data_dir):
    tmp = tmp_path_factory.mktemp("lora")
    recipe = write_recipe(tmp / "r.py", tiny_bert, method="LoRA(r=8, alpha=16, target='all-linear')",
                          train="epochs=10, lr=3e-3, batch_size=16, logging_steps=8")
    return tmp, run_recipe(tmp, recipe, data_dir)


def test_run_directory_is_complete(lora_run):
    tmp, run_dir = lora_run
    for name in ("status.json", "recipe.json", "recipe.py", "environment.json", "metrics.json", "log_history.json",
                 "report.md", "predictions.jsonl", "training_curve.png", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                 "tokenizer/tokenizer.json"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "checkpoints").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["data"]["files"]["sst2/train.tsv"] and env["seed"] == 0 and env["versions"]["peft"]
    assert env["model"]["fingerprint"] and env["command"].startswith("python -m peftlab.run")
    assert 0 < metrics["trainable_params"] < metrics["total_params"]
    assert metrics["peak_rss_bytes"] > 100 * 2**20 and metrics["train_samples_per_second"] > 0
    # the report and its machine-readable twin are copied to reports/, and show the recorded figures
    report = (tmp / "reports" / "tiny.md").read_text()
    assert json.loads((tmp / "reports" / "tiny.json").read_text()) == metrics
    assert f"{metrics['task_metrics']['accuracy']:.4f}" in report
    assert f"{metrics['trainable_params']:,}" in report and env["command"] in report


def test_training_learns_the_task(lora_run):
    _, run_dir = lora_run
    history = json.loads((run_dir / "log_history.json").read_text())
    losses = [e["loss"] for e in history if "loss" in e and "eval_loss" not in e]
    assert losses[-1] < losses[0] * 0.7
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task_metrics"]["accuracy"] >= 0.9  # the tiny task is separable by one word


def test_reload_restores_trained_head_and_scores(lora_run, data_dir, capsys):
    """peft #577/#876: a reloaded classification adapter must bring back its trained head."""
    _, run_dir = lora_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    trained = load_trained(run_dir)
    assert predict.main([str(run_dir), "--eval", "--data-dir", str(data_dir)]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval"]
    assert scored["accuracy"] == pytest.approx(metrics["task_metrics"]["accuracy"])
    assert scored["loss"] == pytest.approx(metrics["task_metrics"]["loss"], abs=1e-5)
    # the head really is the trained one, not a fresh random init
    head = trained.model.base_model.model.classifier
    saved = trained.model.peft_config["default"].modules_to_save
    assert "classifier" in saved and not torch.allclose(head.modules_to_save["default"].weight,
                                                        head.original_module.weight)


def test_predict_texts(lora_run, capsys):
    _, run_dir = lora_run
    assert predict.main([str(run_dir), "a great and lovely film", "a dull boring mess"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["label"] for r in rows] == ["positive", "negative"]
    assert all(0.5 < r["probability"] <= 1 for r in rows)


def test_same_seed_same_metrics(tmp_path, tiny_bert, data_dir):
    from safetensors.torch import load_file

    recipe = write_recipe(tmp_path / "r.py", tiny_bert, train="epochs=1, lr=5e-3, batch_size=16, seed=3, logging_steps=4")
    runs = [run_recipe(tmp_path / name, recipe, data_dir) for name in ("a", "b")]
    first, second = (json.loads((run / "metrics.json").read_text()) for run in runs)
    assert first["task_metrics"] == second["task_metrics"]
    losses = [[e["loss"] for e in json.loads((run / "log_history.json").read_text()) if "loss" in e] for run in runs]
    assert losses[0] == losses[1] and len(losses[0]) >= 2  # the whole loss curve, not only the end
    weights = [load_file(run / "adapter" / "adapter_model.safetensors") for run in runs]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_full_fine_tuning_saves_whole_model(tmp_path, tiny_bert, data_dir):
    recipe = write_recipe(tmp_path / "r.py", tiny_bert, method="FullFineTuning()",
                          train="epochs=1, lr=1e-3, batch_size=32")
    run_dir = run_recipe(tmp_path, recipe, data_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["trainable_params"] == metrics["total_params"]
    assert (run_dir / "model" / "model.safetensors").is_file()
    trained = load_trained(run_dir)
    assert not hasattr(trained.model, "peft_config")


def test_bad_input_leaves_no_run_directory(tmp_path, tiny_bert, data_dir, capsys):
    runs = tmp_path / "runs"
    recipe = write_recipe(tmp_path / "r.py", tiny_bert, method="LoRA(r=0)")
    assert run_cli.main([str(recipe), "--data-dir", str(data_dir), "--runs-dir", str(runs)]) == 2
    assert "method.r=0" in capsys.readouterr().err and not runs.exists()


def test_missing_column_fails_before_anything_is_written(tmp_path, tiny_bert, data_dir, capsys):
    runs = tmp_path / "runs"
    recipe = write_recipe(tmp_path / "r.py", tiny_bert)
    recipe.write_text(recipe.read_text().replace('text="sentence"', 'text="review"'))
    assert run_cli.main([str(recipe), "--data-dir", str(data_dir), "--runs-dir", str(runs),
                         "--reports-dir", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err
    assert "train.tsv: no column 'review' (columns: sentence, label); set data.text/data.label" in err
    assert len(err.strip().splitlines()) == 1 and not runs.exists() and not (tmp_path / "reports").exists()


def test_failure_during_run_marks_it_failed(tmp_path, tiny_bert, capsys):
    """A problem found only while running (a label outside the label set) leaves a 'failed' run, no report."""
    from conftest import write_tsv

    data = tmp_path / "data"
    write_tsv(data / "sst2" / "train.tsv", [("a good film", 1), ("a bad film", 2)])
    write_tsv(data / "sst2" / "validation.tsv", [("a good film", 1)])
    runs = tmp_path / "runs"
    recipe = write_recipe(tmp_path / "r.py", tiny_bert)
    assert run_cli.main([str(recipe), "--data-dir", str(data), "--runs-dir", str(runs),
                         "--reports-dir", str(tmp_path / "reports")]) == 2
    assert "train split: label 2 outside 0..1" in capsys.readouterr().err
    (run_dir,) = runs.iterdir()
    assert rundir.status(run_dir) == "failed" and not (run_dir / "report.md").exists()
    assert (run_dir / "traceback.txt").is_file() and not (tmp_path / "reports").exists()
    with pytest.raises(Exception, match="is 'failed', not finished"):
        load_trained(run_dir)


def test_adapter_refused_on_a_different_base(lora_run, tmp_path):
    _, run_dir = lora_run
    other = make_bert(tmp_path / "other-bert", seed=7)
    recipe = json.loads((run_dir / "recipe.json").read_text())
    recipe["model"]["name"] = str(other)
    copy = tmp_path / "run-copy"
    import shutil

    shutil.copytree(run_dir, copy)
    (copy / "recipe.json").write_text(json.dumps(recipe))
    with pytest.raises(Exception, match="trained on base weights sha256"):
        load_trained(copy)


def test_base_fingerprint_is_hashed_once_per_set_of_weight_files(tmp_path, monkeypatch):
    """predict and merge check the base's sha256 on every load: it is read from a cache keyed by the weight files'
    names, sizes and modification times, and hashed again when any of them changes."""
    import hashlib
    import os

    from peftlab import models

    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    weights = tmp_path / "base" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"a" * 64)
    resolved = models.Resolved(str(weights.parent), "local")
    assert models.weights_fingerprint(resolved) == hashlib.sha256(b"a" * 64).hexdigest()
    stamp = weights.stat()
    weights.write_bytes(b"b" * 64)  # same name and size; the same mtime below: only the cache can answer "a"
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert models.weights_fingerprint(resolved) == hashlib.sha256(b"a" * 64).hexdigest()
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1000))
    assert models.weights_fingerprint(resolved) == hashlib.sha256(b"b" * 64).hexdigest()
    (tmp_path / "cache" / models.FINGERPRINTS).write_text("{not json")  # a damaged cache is rebuilt, not fatal
    assert models.weights_fingerprint(resolved) == hashlib.sha256(b"b" * 64).hexdigest()


def test_predict_a_run_whose_base_came_from_the_hub(lora_run, tmp_path, capsys):
    """A base loaded from the Hub records no weights fingerprint (its revision names it): loading the run compares
    nothing, and must not fail formatting the mismatch message."""
    import shutil

    _, run_dir = lora_run
    copy = tmp_path / "run-copy"
    shutil.copytree(run_dir, copy)
    env = json.loads((copy / "environment.json").read_text())
    env["model"] |= {"source": "hub", "fingerprint": None}
    (copy / "environment.json").write_text(json.dumps(env))
    assert predict.main([str(copy), "a great and lovely film"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["label"] == "positive"


def test_a_failed_report_leaves_the_run_unfinished_and_resumable(tmp_path, tiny_bert, data_dir, monkeypatch, capsys):
    """'finished' is written last, after metrics, adapter and report; checkpoints are removed only after that. A
    failure before (here the disk fills up while the report is written) leaves a failed run that --resume finishes."""
    import errno

    from peftlab import checkpoints

    write_atomic = rundir.write_atomic

    def disk_full_at_report(path, text):
        if path.name == "report.md":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write_atomic(path, text)

    recipe = write_recipe(tmp_path / "r.py", tiny_bert, train="epochs=1, lr=1e-2, batch_size=32, evals_per_epoch=2")
    argv = [str(recipe), "--data-dir", str(data_dir), "--runs-dir", str(tmp_path / "runs"), "--reports-dir", ""]
    monkeypatch.setattr(rundir, "write_atomic", disk_full_at_report)
    assert run_cli.main(argv) == 2
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "report.md: no space left on the device" in capsys.readouterr().err
    assert rundir.status(run_dir) == "failed" and not (run_dir / "report.md").exists()
    assert [p.name for p in checkpoints.complete_checkpoints(run_dir / "checkpoints")][-1] == "checkpoint-8"

    monkeypatch.setattr(rundir, "write_atomic", write_atomic)
    assert run_cli.main([*argv, "--resume", str(run_dir)]) == 0
    assert rundir.status(run_dir) == "finished" and (run_dir / "report.md").is_file()
    assert not (run_dir / "checkpoints").exists()

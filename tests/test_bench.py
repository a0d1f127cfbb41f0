"""The throughput bench's baselines, its report, and the stage timers, on the tiny BERT."""

from __future__ import annotations

import pytest
import transformers

from peftlab import benchmark, measure, phases
from peftlab.recipe import load_recipe, recipe_to_dict

from conftest import run_recipe, write_recipe

TRAIN = "epochs=1, lr=5e-3, batch_size=16, logging_steps=4"


def test_baselines_train_the_same_steps_and_tokens_and_the_report_compares_them(tmp_path, tiny_bert, data_dir):
    recipe_path = write_recipe(tmp_path / "r.py", tiny_bert, train=TRAIN)
    recipe = load_recipe(recipe_path)
    tutorial = benchmark.train_plain(recipe, data_dir, padded=True)
    best = benchmark.train_plain(recipe, data_dir, padded=False)
    ours = benchmark.peftlab_result(run_recipe(tmp_path, recipe_path, data_dir))
    runs = [r | {"approach": name, "seed": 0, "repeat": 1, "wall_seconds": 1.0}
            for name, r in zip(benchmark.APPROACHES, (tutorial, best, ours))]
    # 256 examples at batch 16: the same 16 steps, and the same real (non-pad) tokens however they were padded
    assert {r["steps"] for r in runs} == {16} and {r["train_examples"] for r in runs} == {256}
    tokens = [r["tokens_per_second"] * r["train_seconds"] for r in runs]
    assert tokens[1] == pytest.approx(tokens[0]) and tokens[2] == pytest.approx(tokens[0])
    assert all(0 <= r["task_metrics"]["accuracy"] <= 1 and r["peak_rss_bytes"] > 0 for r in runs)

    record = {"command": "python -m peftlab.bench r.py", "recipe": recipe_to_dict(recipe), "seeds": [0], "repeats": 1,
              "environment": measure.environment(), "runs": runs, "summary": benchmark.summarize(runs, "accuracy")}
    text = benchmark.render(record)
    for name, result in zip(("tutorial", "best_practice"), (tutorial, best)):
        speedup = ours["samples_per_second"] / result["samples_per_second"]
        assert record["summary"][name]["peftlab_speedup"] == pytest.approx(speedup)
        assert f"| peftlab vs {name} | {speedup:.2f}× |" in text
        assert record["summary"][name]["speed_met"] == (speedup >= benchmark.TARGETS[name])
    assert f"{100 * best['task_metrics']['accuracy']:.2f} %" in text


def test_stage_timers_account_for_the_whole_run(tmp_path, tiny_bert, data_dir):
    recipe_path = write_recipe(tmp_path / "r.py", tiny_bert, train=TRAIN)
    train_before = transformers.Trainer.train
    timed = phases.profile_run(lambda: benchmark.run_in_process(recipe_path, [], str(data_dir), tmp_path / "runs"),
                               "classification")
    assert timed["exit_code"] == 0 and transformers.Trainer.train is train_before  # timers removed again
    stages = timed["phases"]
    # training forward passes, backward passes and optimizer steps once per step; evaluation (whose forward passes
    # are its own) once, at the end
    assert stages["forward + loss"]["calls"] == stages["backward"]["calls"] == stages["optimizer step"]["calls"] == 16
    assert stages["evaluation (forward, metrics)"]["calls"] == 1
    assert stages["scoring the reported split once, after training"]["calls"] == 1
    # each stage counts only its own time, so together they make up the whole run
    assert sum(s["seconds"] for s in stages.values()) == pytest.approx(timed["total_seconds"], abs=1e-3)

"""The comparison harness on a tiny BERT: subprocess per variant, failed rows kept, a learning rate chosen per
variant on the selection split, intervals and paired tests recomputed from the runs' predictions, report = run
records."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from peftlab import compare, comparison_stats, stats
from peftlab.comparison import Comparison, load_comparison, run_variant
from peftlab.errors import PeftlabError
from peftlab.measure import human_bytes
from peftlab.plan import parse_size
from peftlab.tasks import get_task

from conftest import write_recipe

TRAIN = "epochs=2, lr=1e-2, batch_size=32, logging_steps=4"


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, tiny_bert, data_dir):
    tmp = tmp_path_factory.mktemp("compare")
    write_recipe(tmp / "full.py", tiny_bert, method="FullFineTuning()", train=TRAIN, name="full")
    write_recipe(tmp / "lora.py", tiny_bert, method="LoRA(r=4, target='all-linear')", train=TRAIN, name="lora")
    write_recipe(tmp / "broken.py", tiny_bert, method="LoRA(target=['no_such_layer'])", train=TRAIN, name="broken")
    (tmp / "cmp.py").write_text(
        "from peftlab import Comparison\n"
        "comparison = Comparison(name='cmp', recipes=['full.py', 'lora.py', 'broken.py'], baseline='full',\n"
        "                        seeds=[0, 1], overrides=['data.train_limit=128'], bootstrap=200,\n"
        "                        lrs={'full.py': [1e-5, 1e-3], 'lora.py': [1e-5, 1e-3]})\n")
    # through `python -m`, as a user runs it (the comparison file imports peftlab.Comparison)
    done = subprocess.run([sys.executable, "-m", "peftlab.compare", str(tmp / "cmp.py"), "--runs-dir", str(tmp / "runs"),
                           "--reports-dir", str(tmp / "reports")], env=os.environ | {"PEFTLAB_DATA_DIR": str(data_dir)},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1000:]
    return tmp


def _table_rows(report: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split(" | ") for line in report.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows[1:]}


def _reported(record: dict, name: str) -> list[dict]:
    """The variant's runs at its chosen learning rate, one per seed."""
    chosen = record["lr_search"][name]["chosen"]
    return [v for v in record["variants"] if v["name"] == name and v["lr"] == chosen]


@pytest.mark.slow  # the comparison fixture runs every variant (once per module)
def test_learning_rate_chosen_on_the_selection_split(comparison):
    """Both grid points ran on seed 0; the one with the better selection-split accuracy (the selected checkpoint's
    evaluation in its log, never the reported score) was kept, and seed 1 ran at it only."""
    record = json.loads((comparison / "reports" / "cmp.json").read_text())
    report = (comparison / "reports" / "cmp.md").read_text()
    # every recipe's first seed (its grid) runs before any later seed, so that a comparison stopped part-way pairs
    assert [(v["seed"], v["name"]) for v in record["variants"]] == [
        (0, "full"), (0, "full"), (0, "lora"), (0, "lora"), (0, "broken"), (1, "full"), (1, "lora"), (1, "broken")]
    for name in ("full", "lora"):
        search = record["lr_search"][name]
        grid = {v["lr"]: v for v in record["variants"] if v["name"] == name and v["seed"] == 0}
        assert sorted(grid) == [1e-5, 1e-3] and search["grid"] == [1e-5, 1e-3]
        scores = {}
        for lr, v in grid.items():
            metrics = json.loads((Path(v["run"]) / "metrics.json").read_text())
            log = json.loads((Path(v["run"]) / "log_history.json").read_text())
            step = metrics.get("protocol", {}).get("selected_step", metrics["best_step"])
            scores[lr] = next(e["eval_accuracy"] for e in log if e.get("step") == step and "eval_accuracy" in e)
        assert len(set(scores.values())) == 2  # 1e-5 barely leaves the initial model: the choice means something
        assert search["chosen"] == max(sorted(scores), key=scores.get)
        assert [(v["seed"], v["state"]) for v in _reported(record, name)] == [(0, "finished"), (1, "finished")]
        assert [v["lr"] for v in record["variants"] if v["name"] == name and v["seed"] == 1] == [search["chosen"]]
        assert record["results"][name]["lr"] == search["chosen"]
        cells = _table_rows(report.split("## Learning rates")[1].split("##")[0])[name]
        # a two-point grid's choice is always one of its edges, which the table marks
        assert cells[-1] == f"{search['chosen']:g} (grid edge)" and f"**{search['chosen']:g}: {100 * scores[search['chosen']]:.2f}**" in cells[2]


@pytest.mark.slow
def test_intervals_and_paired_tests_come_from_the_predictions(comparison):
    """Recomputed here from each run's predictions.jsonl with the same resamples: the JSON's mean, ci95 and
    p_value, and the markdown cells."""
    record = json.loads((comparison / "reports" / "cmp.json").read_text())
    rows = _table_rows((comparison / "reports" / "cmp.md").read_text().split("## Results")[1].split("Pareto")[0])
    task = get_task("classification")
    records = {name: [comparison_stats.read_predictions(v["run"]) for v in _reported(record, name)]
               for name in ("full", "lora")}
    for name, runs in records.items():
        accuracy = record["results"][name]["metrics"]["accuracy"]
        ci = stats.pooled_ci(runs, task.score_predictions, n=200)["accuracy"]
        assert accuracy["mean"] == pytest.approx(ci.point) and accuracy["ci95"] == pytest.approx([ci.low, ci.high])
        metrics = [json.loads((Path(v["run"]) / "metrics.json").read_text()) for v in _reported(record, name)]
        assert ci.point == pytest.approx(sum(m["task_metrics"]["accuracy"] for m in metrics) / 2)  # records = metrics
        assert ci.low <= ci.point <= ci.high and ci.high > ci.low
        assert rows[name][11] == f"{100 * ci.point:.2f} [{100 * ci.low:.2f}, {100 * ci.high:.2f}]"
    diff = stats.pooled_paired(records["lora"], records["full"], task.score_predictions, n=200)["accuracy"]
    lora = record["results"]["lora"]["metrics"]["accuracy"]
    assert lora["p_value"] == pytest.approx(diff.p_value) and lora["delta_ci95"] == pytest.approx([diff.low, diff.high])
    assert rows["lora"][-1].strip("*\\ ").startswith(f"{100 * diff.difference:+.2f} [")
    assert record["results"]["full"]["metrics"]["accuracy"]["p_value"] == 1.0  # the baseline against itself
    assert rows["full"][-1] == "+0.00 [+0.00, +0.00] p=1.000"
    assert "## Paired tests against full" in (comparison / "reports" / "cmp.md").read_text()


@pytest.mark.slow
def test_report_matches_run_records(comparison):
    record = json.loads((comparison / "reports" / "cmp.json").read_text())
    report = (comparison / "reports" / "cmp.md").read_text()
    rows = _table_rows(report.split("## Results")[1].split("Pareto")[0])
    for name in ("full", "lora"):
        runs = _reported(record, name)
        metrics = [json.loads((Path(v["run"]) / "metrics.json").read_text()) for v in runs]
        row = rows[name]
        assert row[2].startswith(f"{metrics[0]['trainable_params']:,}")
        memory = [m["memory"] for m in metrics]
        assert row[4] == human_bytes(sum(m["model_state_bytes"]["total"] for m in memory) / 2)
        assert row[5] == human_bytes(sum(m["train_peak_bytes"] for m in memory) / 2)
        planned = sum(m["plan_at_largest_batch"]["train_peak_bytes"] for m in memory) / 2
        assert row[6].startswith(human_bytes(planned) + " (")
        assert row[7] == human_bytes(sum(m["train_peak_rss_bytes"] for m in memory) / 2)
        assert row[8] == human_bytes(sum(m["eval_peak_rss_bytes"] for m in memory) / 2)
    # each seed's own run report, none overwritten by another seed's
    for seed in (0, 1):  # and per grid point: reports/<comparison>/seed<seed>/lr<lr>/
        own = comparison / "reports" / "cmp" / f"seed{seed}" / f"lr{record['lr_search']['full']['chosen']:g}"
        assert f"| seed | {seed} |" in (own / "full.md").read_text()
    loads = [x for name in ("full", "lora") for v in _reported(record, name)
             for x in (json.loads((Path(v["run"]) / "environment.json").read_text())["load_average_at_start"],
                       json.loads((Path(v["run"]) / "metrics.json").read_text())["load_average_at_end"])]
    assert f"| machine load (1-min average, runs' start and end) | {min(loads):.1f}-{max(loads):.1f}" in report
    assert (comparison / "reports" / "cmp" / "memory_vs_score.png").stat().st_size > 1000
    assert "(cmp/memory_vs_score.png)" in report and "python -m peftlab.compare" in report


@pytest.mark.slow
def test_failed_variant_is_a_row_with_its_reason(comparison):
    report = (comparison / "reports" / "cmp.md").read_text()
    row = _table_rows(report.split("## Results")[1].split("Pareto")[0])["broken"]
    assert row[1] == "**failed**" and "no_such_layer" in row[2]


@pytest.mark.slow
def test_report_rebuilds_from_records_alone(comparison, tmp_path):
    record = json.loads((comparison / "reports" / "cmp.json").read_text())
    assert compare.main([record["dir"], "--report-only", "--reports-dir", str(tmp_path)]) == 0
    assert (tmp_path / "cmp.md").read_text() == (comparison / "reports" / "cmp.md").read_text()


def _without_runs_section(report: str) -> str:
    return report.split("## Runs")[0]


@pytest.mark.slow
def test_kept_records_rebuild_the_report_without_the_runs_directory(comparison, tmp_path):
    """reports/<comparison>/records holds what every figure comes from and no weights: copied elsewhere (another
    machine, the runs directory gone), it rebuilds the same report; only the run paths it lists differ."""
    import shutil

    records = shutil.copytree(comparison / "reports" / "cmp" / "records", tmp_path / "elsewhere" / "records")
    kept = {p.name for p in records.rglob("*") if p.is_file()}
    assert "predictions.jsonl" in kept and "metrics.json" in kept
    assert not kept & {"adapter_model.safetensors", "model.safetensors", "optimizer.pt"}
    assert compare.main([str(records), "--report-only", "--reports-dir", str(tmp_path / "out")]) == 0
    rebuilt, original = (tmp_path / "out" / "cmp.md").read_text(), (comparison / "reports" / "cmp.md").read_text()
    assert _without_runs_section(rebuilt) == _without_runs_section(original)
    assert str(records) in rebuilt.split("## Runs")[1]


def test_records_kept_again_link_unchanged_runs_and_copy_changed_ones(tmp_path):
    """Records are kept after every run: a run whose status is unchanged since last time is hard-linked from the
    earlier copy (not copied again), a run that changed is copied afresh, and a run the record no longer names goes."""
    from peftlab import comparison_records

    runs = tmp_path / "runs" / "cmp"
    record = {"dir": str(runs), "variants": []}
    for name in ("a", "b", "c"):
        run = runs / f"{name}-seed0" / f"{name}-1"
        run.mkdir(parents=True)
        (run / "status.json").write_text('{"state": "running"}')
        (run / "predictions.jsonl").write_text(f'{{"id": 0, "run": "{name}"}}\n')
        (run / "model.safetensors").write_text("weights")
        record["variants"].append({"name": name, "run": str(run)})
    folder = comparison_records.keep(record, tmp_path / "records")
    first = {name: os.stat(folder / f"{name}-seed0" / f"{name}-1" / "predictions.jsonl").st_ino for name in "abc"}

    changed = runs / "b-seed0" / "b-1"
    (changed / "status.json").write_text('{"state": "finished"}')
    (changed / "predictions.jsonl").write_text('{"id": 0, "run": "b, finished"}\n')
    record["variants"] = record["variants"][:2]
    comparison_records.keep(record, folder)
    kept_a, kept_b = folder / "a-seed0" / "a-1", folder / "b-seed0" / "b-1"
    assert os.stat(kept_a / "predictions.jsonl").st_ino == first["a"]
    assert (kept_a / "predictions.jsonl").read_text() == '{"id": 0, "run": "a"}\n'
    assert (kept_b / "predictions.jsonl").read_text() == '{"id": 0, "run": "b, finished"}\n'
    assert (kept_b / "status.json").read_text() == '{"state": "finished"}'
    assert not (folder / "c-seed0").exists() and not (kept_a / "model.safetensors").exists()
    assert comparison_records.load(folder)["variants"][0]["run"] == str(kept_a)


@pytest.mark.slow
def test_named_pairs_are_tested_like_the_baseline(comparison, tmp_path):
    """Comparison.pairs adds paired tests between two variants: lora against full must give exactly the figures of
    lora's test against the baseline (full), in the markdown and in the JSON."""
    from peftlab import comparison_report

    record = json.loads((comparison / "reports" / "cmp.json").read_text())
    record.pop("results")
    comparison_report.write(record | {"pairs": {"lora": "full"}}, tmp_path)
    report, results = (tmp_path / "cmp.md").read_text(), json.loads((tmp_path / "cmp.json").read_text())["results"]
    assert results["lora"]["vs"]["against"] == "full"
    for metric, figures in results["lora"]["vs"]["metrics"].items():
        assert figures == {k: results["lora"]["metrics"][metric][k]
                           for k in ("delta", "delta_ci95", "p_value", "ratio", "ratio_ci95")}
    baseline_row = next(line for line in report.split("## Paired tests")[1].splitlines() if line.startswith("| lora |"))
    pair_row = next(line for line in report.split("## Other paired tests")[1].splitlines() if line.startswith("| lora |"))
    assert pair_row == baseline_row.replace("| lora |", "| lora | full |", 1)
    assert "| accuracy as % of full |" in report and "| accuracy as % of it |" in report


def test_pairs_must_name_variants_of_the_comparison(tmp_path, tiny_bert):
    write_recipe(tmp_path / "a.py", tiny_bert, name="a")
    (tmp_path / "cmp.py").write_text("from peftlab import Comparison\n"
                                     "comparison = Comparison(name='x', recipes=['a.py'], baseline='a', "
                                     "pairs={'a': 'qlora'})\n")
    with pytest.raises(PeftlabError, match=r"pairs name \['qlora'\], not among the recipes"):
        load_comparison(tmp_path / "cmp.py")


def test_variants_must_share_the_task(tmp_path, tiny_bert):
    write_recipe(tmp_path / "a.py", tiny_bert, name="a")
    other = write_recipe(tmp_path / "b.py", tiny_bert, name="b")
    other.write_text(other.read_text().replace("max_length=32", "max_length=16"))
    (tmp_path / "cmp.py").write_text("from peftlab import Comparison\n"
                                     "comparison = Comparison(name='x', recipes=['a.py', 'b.py'], baseline='a')\n")
    with pytest.raises(PeftlabError, match="model or data differ"):
        load_comparison(tmp_path / "cmp.py")


def test_parse_budget():
    assert parse_size("16GiB") == 16 * 2**30 and parse_size("512MiB") == 512 * 2**20 and parse_size("100") == 100


def test_variant_without_overrides_is_the_recipes_own_run(tmp_path, tiny_bert, data_dir, monkeypatch):
    """No overrides, the recipe's seed: the variant's report is the recipe's report too (reports/<recipe>.md);
    another seed or any override makes a different run, whose report stays in reports/<comparison>/."""
    write_recipe(tmp_path / "lora.py", tiny_bert, method="LoRA(r=4)", name="lora",
                 train="epochs=1, lr=1e-2, batch_size=32, seed=3")
    text = (tmp_path / "lora.py").read_text().replace('max_length=32)', 'max_length=32, train_limit=64)')
    (tmp_path / "lora.py").write_text(text)
    (tmp_path / "cmp.py").write_text("from peftlab import Comparison\n"
                                     "comparison = Comparison(name='cmp', recipes=['lora.py'], baseline='lora', "
                                     "seeds=[3, 4])\n")
    _, variants = load_comparison(tmp_path / "cmp.py")
    assert [(v.seed, v.is_recipe_run) for v in variants] == [(3, True), (4, False)]
    (tmp_path / "cmp2.py").write_text((tmp_path / "cmp.py").read_text().replace("seeds=[3, 4]", "seeds=[3], "
                                                                                 "overrides=['train.lr=1e-3']"))
    assert [v.is_recipe_run for v in load_comparison(tmp_path / "cmp2.py")[1]] == [False]
    only_seed_3 = Comparison(name="cmp", recipes=["lora.py"], baseline="lora", seeds=[3])
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    runs.mkdir()
    monkeypatch.setenv("PEFTLAB_DATA_DIR", str(data_dir))  # the variant's subprocess reads it
    result = run_variant(variants[0], only_seed_3, runs, reports / "cmp")
    assert result["state"] == "finished"
    # the same report; each copy links the run's TensorBoard folder from where it lies
    own, copy = (re.sub(r"\]\([^)]*tensorboard\)", "](tensorboard)", (folder / "lora.md").read_text())
                 for folder in (reports, reports / "cmp"))
    assert own == copy
    assert "python -m peftlab.run" in (reports / "lora.md").read_text()
    assert "--set" not in json.loads((Path(result["run"]) / "environment.json").read_text())["command"]


def test_bad_learning_rate_grids_are_refused_before_anything_runs(tmp_path, tiny_bert):
    write_recipe(tmp_path / "a.py", tiny_bert, name="a")
    for lrs, overrides, message in [("{'b.py': [1e-3]}", "[]", "not among the recipes"),
                                    ("'auto'", "['train.lr=1e-3']", "keep one"),
                                    ("{'a.py': []}", "[]", "non-empty list"),
                                    ("[1e-3]", "[]", "give None")]:
        (tmp_path / "cmp.py").write_text("from peftlab import Comparison\n"
                                         f"comparison = Comparison(name='x', recipes=['a.py'], baseline='a', "
                                         f"lrs={lrs}, overrides={overrides})\n")
        with pytest.raises(PeftlabError, match=message):
            load_comparison(tmp_path / "cmp.py")


@pytest.mark.slow
def test_resume_runs_only_what_is_missing(comparison, tmp_path, monkeypatch):
    """A comparison stopped part-way resumes from its comparison.json: recorded runs are kept, the rest run, and the
    learning-rate choice re-derived from the recorded grid runs is the one the uninterrupted comparison made."""
    import shutil

    from peftlab import comparison as harness
    from peftlab import rundir

    full = json.loads((comparison / "reports" / "cmp.json").read_text())
    stopped = tmp_path / "cmp-stopped"
    shutil.copytree(full["dir"], stopped)
    kept, missing = full["variants"][:3], full["variants"][3:]
    rundir.write_json(stopped / "comparison.json", full | {"variants": kept, "dir": str(stopped)})
    rundir.set_status(stopped, "interrupted")
    ran = []

    def replay(variant, *args, **kwargs):  # the run the uninterrupted comparison recorded for this variant
        ran.append(variant.label)
        return next(v for v in missing if (v["name"], v["seed"], v["lr"]) == (variant.name, variant.seed, variant.lr))

    monkeypatch.setattr(harness, "run_variant", replay)
    assert compare.main([str(comparison / "cmp.py"), "--resume", str(stopped), "--reports-dir", str(tmp_path)]) == 0
    resumed = json.loads((tmp_path / "cmp.json").read_text())
    labels = [harness.Variant(Path(v["recipe"]), v["name"], v["seed"], lr=v["lr"]).label for v in missing]
    assert ran == labels
    assert resumed["lr_search"] == full["lr_search"] and resumed["variants"] == full["variants"]
    assert resumed["resumed"] and rundir.status(stopped) == rundir.FINISHED
    assert "Continued (after a stop, or to add recipes or seeds) with:" in (tmp_path / "cmp.md").read_text()
    ran.clear()  # resumed again once finished, with no recipe added: only its failed runs (broken.py) run again
    assert compare.main([str(comparison / "cmp.py"), "--resume", str(stopped), "--reports-dir", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "cmp.json").read_text())
    failed = [harness.Variant(Path(v["recipe"]), v["name"], v["seed"], lr=v["lr"]).label
              for v in full["variants"] if v["state"] == "failed"]
    assert failed and ran == failed and again["variants"] == full["variants"] and len(again["resumed"]) == 2



@pytest.mark.slow
def test_ctrl_c_marks_the_comparison_interrupted_and_says_how_to_resume(comparison, tmp_path, monkeypatch, capsys):
    """Ctrl-C during the second run: exit code 130, the first run recorded, the comparison marked interrupted, and
    the command printed continues it, running only what was missing."""
    import shlex

    from peftlab import comparison as harness
    from peftlab import rundir

    full = json.loads((comparison / "reports" / "cmp.json").read_text())
    ran = []

    def replay(variant, *args, **kwargs):
        ran.append(variant.label)
        if len(ran) == 2:
            raise KeyboardInterrupt
        return next(v for v in full["variants"] if (v["name"], v["seed"], v["lr"]) == (variant.name, variant.seed,
                                                                                      variant.lr))

    monkeypatch.setattr(harness, "run_variant", replay)
    argv = [str(comparison / "cmp.py"), "--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path)]
    assert compare.main(argv) == 130
    (stopped,) = list((tmp_path / "runs").iterdir())
    assert rundir.status(stopped) == "interrupted"
    assert len(json.loads((stopped / "comparison.json").read_text())["variants"]) == 1
    command = capsys.readouterr().err.split("resume with: ")[1].strip()
    assert shlex.split(command) == ["python", "-m", "peftlab.compare", *argv, "--resume", str(stopped)]
    assert compare.main(shlex.split(command)[3:]) == 0  # the interrupted run again, then the rest
    assert ran[2:] == [harness.Variant(Path(v["recipe"]), v["name"], v["seed"], lr=v["lr"]).label
                       for v in full["variants"][1:]]
    assert rundir.status(stopped) == rundir.FINISHED


def _with_a_new_recipe(comparison, tmp_path, full: dict, monkeypatch, data_dir) -> list[str]:
    """tmp_path/cmp.py: the comparison file with a new recipe, lora2. Runs recorded in `full` replay (the failed ones
    fail again), lora2's run for real; returns the list the labels of the runs asked for are appended to."""
    import shutil

    from peftlab import comparison as harness

    for name in ("full.py", "lora.py", "broken.py"):
        shutil.copy(comparison / name, tmp_path / name)
    (tmp_path / "lora2.py").write_text((comparison / "lora.py").read_text().replace("name='lora'", "name='lora2'"))
    (tmp_path / "cmp.py").write_text((comparison / "cmp.py").read_text().replace("'broken.py']",
                                                                                "'broken.py', 'lora2.py']"))
    ran, real_run = [], harness.run_variant

    def replay_or_run(variant, *args, **kwargs):
        ran.append(variant.label)
        if variant.name == "lora2":
            return real_run(variant, *args, **kwargs)
        return next(v for v in full["variants"] if (v["name"], v["seed"], v["lr"]) == (variant.name, variant.seed,
                                                                                      variant.lr))

    monkeypatch.setattr(harness, "run_variant", replay_or_run)
    monkeypatch.setenv("PEFTLAB_DATA_DIR", str(data_dir))
    return ran


@pytest.mark.slow
def test_resume_adds_a_recipe_to_a_finished_comparison(comparison, tmp_path, monkeypatch, data_dir):
    """A finished comparison whose file gained a recipe resumes into the same directory: the recorded runs are kept,
    the new recipe's runs run (for real), and the report has its row."""
    import shutil

    full = json.loads((comparison / "reports" / "cmp.json").read_text())
    done = tmp_path / "cmp-done"
    shutil.copytree(full["dir"], done)
    ran = _with_a_new_recipe(comparison, tmp_path, full, monkeypatch, data_dir)
    argv = [str(tmp_path / "cmp.py"), "--resume", str(done), "--reports-dir", str(tmp_path / "reports")]
    assert compare.main(argv) == 0
    assert ran == ["broken-seed0", "lora2-seed0", "broken-seed1", "lora2-seed1"]  # failed runs retry; lora2 is new
    resumed = json.loads((tmp_path / "reports" / "cmp.json").read_text())
    assert [v for v in resumed["variants"] if v["name"] != "lora2"] == full["variants"]
    assert [v["state"] for v in resumed["variants"] if v["name"] == "lora2"] == ["finished", "finished"]
    assert "| lora2 |" in (tmp_path / "reports" / "cmp.md").read_text()


@pytest.mark.slow
def test_resume_adds_seeds_to_a_finished_comparison(comparison, tmp_path, monkeypatch, data_dir, capsys):
    """More seeds narrow a comparison's interval: a finished comparison whose file gained a seed after its own runs
    that seed only, at the rates the first seed's search chose. Seeds that do not extend the recorded ones (the
    search ran on the first) are refused."""
    import shutil

    from peftlab import comparison as harness

    full = json.loads((comparison / "reports" / "cmp.json").read_text())
    done = shutil.copytree(full["dir"], tmp_path / "cmp-done")
    for name in ("full.py", "lora.py", "broken.py"):
        shutil.copy(comparison / name, tmp_path / name)
    (tmp_path / "cmp.py").write_text((comparison / "cmp.py").read_text().replace("seeds=[0, 1]", "seeds=[0, 1, 2]"))
    ran, real_run = [], harness.run_variant

    def replay_or_run(variant, *args, **kwargs):
        ran.append(variant.label)
        recorded = [v for v in full["variants"] if (v["name"], v["seed"], v["lr"]) == (variant.name, variant.seed,
                                                                                       variant.lr)]
        return recorded[0] if recorded else real_run(variant, *args, **kwargs)

    monkeypatch.setattr(harness, "run_variant", replay_or_run)
    monkeypatch.setenv("PEFTLAB_DATA_DIR", str(data_dir))
    argv = [str(tmp_path / "cmp.py"), "--resume", str(done), "--reports-dir", str(tmp_path / "reports")]
    assert compare.main(argv) == 0
    chosen = {name: full["lr_search"][name]["chosen"] for name in ("full", "lora")}
    assert sorted(label for label in ran if not label.startswith("broken")) == [
        f"{name}-seed2-lr{chosen[name]:g}" for name in ("full", "lora")]
    resumed = json.loads((tmp_path / "reports" / "cmp.json").read_text())
    assert resumed["seeds"] == [0, 1, 2] and all(v in resumed["variants"] for v in full["variants"])
    assert {v["name"] for v in resumed["variants"] if v["seed"] == 2 and v["state"] == "finished"} == {"full", "lora"}

    (tmp_path / "cmp.py").write_text((comparison / "cmp.py").read_text().replace("seeds=[0, 1]", "seeds=[1, 2]"))
    assert compare.main(argv) == 2
    assert "seeds differ" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_from_kept_records_adds_a_recipe(comparison, tmp_path, monkeypatch, data_dir):
    """A comparison continued from its kept records (as on another machine): the recorded runs are kept, the new
    recipe's runs run in a new runs directory, and the records afterwards hold both."""
    import shutil

    full = json.loads((comparison / "reports" / "cmp.json").read_text())
    records = shutil.copytree(comparison / "reports" / "cmp" / "records", tmp_path / "reports" / "cmp" / "records")
    ran = _with_a_new_recipe(comparison, tmp_path, full, monkeypatch, data_dir)
    argv = [str(tmp_path / "cmp.py"), "--resume", str(records), "--runs-dir", str(tmp_path / "runs"),
            "--reports-dir", str(tmp_path / "reports")]
    assert compare.main(argv) == 0
    assert ran == ["broken-seed0", "lora2-seed0", "broken-seed1", "lora2-seed1"]
    resumed = json.loads((tmp_path / "reports" / "cmp.json").read_text())
    assert Path(resumed["dir"]).parent == tmp_path / "runs"
    before = [{k: v for k, v in r.items() if k != "run"} for r in full["variants"]]
    assert [{k: v for k, v in r.items() if k != "run"} for r in resumed["variants"] if r["name"] != "lora2"] == before
    kept = json.loads((records / "comparison.json").read_text())
    assert [v["name"] for v in kept["variants"]].count("lora2") == 2
    assert all((records / v["run"] / "metrics.json").is_file() for v in kept["variants"] if v["state"] == "finished")
    assert "| lora2 |" in (tmp_path / "reports" / "cmp.md").read_text()


def test_rss_recorded_with_the_profilers_steps_is_left_out_of_the_table():
    """Runs recorded before the training RSS left the profiled steps out show no RSS (it ranked LoRA above full
    fine-tuning); runs recorded since show theirs; the live-tensor columns are shown either way."""
    from peftlab import comparison_report

    def row(name: str, **memory):
        state = {"weights": 100, "gradients": 0, "optimizer": 0, "total": 100}
        memory = {"model_state_bytes": state, "train_peak_bytes": 2**30, "train_peak_rss_bytes": 3 * 2**30,
                  "eval_peak_rss_bytes": 2**31} | memory
        return {"name": name, "runs": [{"metrics": {"memory": memory}}] * 2}

    old, new = row("old"), row("new", train_rss_largest_batch={"tokens": 8, "sequence": 4})
    assert comparison_report.memory_cells(old)[3:] == [comparison_report.OLD_RSS] * 2
    assert comparison_report.memory_cells(new)[3:] == [human_bytes(3 * 2**30), human_bytes(2**31)]
    assert comparison_report.memory_cells(old)[1] == comparison_report.memory_cells(new)[1] == human_bytes(2**30)
    assert "old" in comparison_report.old_rss_note([old, new]) and comparison_report.old_rss_note([new]) == ""


def test_differing_memory_levers_are_named_beside_the_table():
    """"auto" and --budget choose checkpointing and the micro-batch per run: a table whose variants trained with
    different levers says so, naming each variant's, since its memory and time columns compare them too."""
    from peftlab import comparison_report

    def row(name: str, *levers: tuple):  # (checkpointing, micro-batch[, trim_memory: absent in older records])
        return {"name": name, "runs": [{"environment": {"levers": {"gradient_checkpointing": c, "micro_batch_size": m}
                                                        | ({"trim_memory": t[0]} if t else {})}} for c, m, *t in levers]}

    same = [row("full", (False, 8, False), (False, 8, False)), row("lora", (False, 8, False))]
    assert comparison_report.levers_note(same) == ("Memory levers, every run: gradient checkpointing off, micro-batch "
                                                   "8, freed memory returned between phases only.")
    mixed = comparison_report.levers_note([row("full", (True, 8, False), (False, 8)), row("lora", (False, 8, False))])
    assert mixed.startswith("Memory levers differ between runs")
    assert ("full: gradient checkpointing off, micro-batch 8, freed memory returned after every step / gradient "
            "checkpointing on, micro-batch 8, freed memory returned between phases only") in mixed
    assert "lora: gradient checkpointing off, micro-batch 8, freed memory returned between phases only." in mixed
    assert comparison_report.levers_note([{"name": "old", "runs": [{"environment": {}}]}]) == ""


def test_a_comparison_stopped_part_way_says_which_seeds_its_figures_are_on():
    """Stopped after full's grid and seed 1 but during lora's grid: full reports its chosen rate's seeds 0 and 1 and
    says that seed 2 is missing; lora's lone grid run is reported nowhere (its rate is not chosen yet)."""
    from peftlab import comparison_report

    def run(name: str, seed: int, lr: float) -> dict:
        return {"name": name, "seed": seed, "lr": lr, "state": "finished", "error": None}

    record = {"seeds": [0, 1, 2], "lr_search": {"full": {"chosen": 1e-3}},
              "variants": [run("full", 0, 1e-5), run("full", 0, 1e-3), run("lora", 0, 1e-5), run("full", 1, 1e-3)]}
    assert comparison_report._reported_runs(record) == [run("full", 0, 1e-3), run("full", 1, 1e-3)]
    line = comparison_report._part_way_line(record)
    assert line.startswith("**Part-way:** the comparison asks for seeds 0, 1, 2; reported so far: full seeds 0, 1; "
                           "lora none (its rate search has not finished).")
    finished = record | {"lr_search": record["lr_search"] | {"lora": {"chosen": 1e-5}},
                         "variants": [*record["variants"], run("lora", 1, 1e-5), run("full", 2, 1e-3),
                                      run("lora", 2, 1e-5)]}
    assert comparison_report._part_way_line(finished) == ""
    no_grid = {"seeds": [0, 1], "variants": [run("full", 0, None), run("full", 1, None)]}  # recipe rates
    assert len(comparison_report._reported_runs(no_grid)) == 2 and comparison_report._part_way_line(no_grid) == ""

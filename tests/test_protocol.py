"""The evaluation protocol: checkpoints chosen on a selection split carved from train, the reported split scored once
after training, data subsets independent of the training seed, per-example records that reproduce the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftlab import Data
from peftlab import data as data_stage
from peftlab.errors import PeftlabError
from peftlab.tasks import get_task

from conftest import run_recipe, sentiment_rows, write_recipe, write_tsv


def test_selection_is_carved_from_train_and_subsets_follow_the_data_seed(data_dir):
    data = Data("sst2", text="sentence", selection=0.25, train_limit=100, eval_limit=20)
    splits = data_stage.load_splits(data, data_dir)
    assert splits.sizes == {"selection": {"split": "train", "examples": 71, "of": 284},
                            "train": {"split": "train", "examples": 100, "of": 284},
                            "eval": {"split": "validation", "examples": 20, "of": 64}}
    assert not set(splits.ids["selection"]) & set(splits.ids["train"])  # never trained on what selects
    assert splits.ids["train"] == sorted(splits.ids["train"])  # split order kept: ids are row numbers
    whole = data_stage.read_file(data_dir / "sst2" / "train.tsv")
    assert splits.train["sentence"] == [whole[i]["sentence"] for i in splits.ids["train"]]
    # the same data whatever else changes; another data seed draws other examples
    again = data_stage.load_splits(data, data_dir)
    assert again.ids == splits.ids
    other = data_stage.load_splits(Data("sst2", text="sentence", selection=0.25, train_limit=100, eval_limit=20,
                                        seed=1), data_dir)
    assert other.ids["selection"] != splits.ids["selection"] and other.ids["eval"] != splits.ids["eval"]
    # nested: a larger limit adds examples and keeps the others
    larger = data_stage.load_splits(Data("sst2", text="sentence", selection=0.25, train_limit=150, eval_limit=30),
                                    data_dir)
    assert set(splits.ids["train"]) < set(larger.ids["train"]) and set(splits.ids["eval"]) < set(larger.ids["eval"])
    assert larger.ids["selection"] == splits.ids["selection"]


def test_selection_sizes(data_dir):
    assert data_stage.selection_size(0.1, 256) == 26 and data_stage.selection_size(0.1, 67_349) == 1000  # capped
    assert data_stage.selection_size(40, 256) == 40
    with pytest.raises(PeftlabError, match=r"data.selection=284: the train split has only 284 examples"):
        data_stage.load_splits(Data("sst2", text="sentence", selection=284), data_dir)


# ------------------------------------------------------------------------------------------- whole runs

@pytest.fixture(scope="module")
def flipped_dir(tmp_path_factory) -> Path:
    """Validation labels are the opposite of what train teaches: a checkpoint chosen on validation would be the
    worst-trained one, a checkpoint chosen on examples held out of train the best-trained one."""
    root = tmp_path_factory.mktemp("flipped")
    write_tsv(root / "sst2" / "train.tsv", sentiment_rows(256, seed=1))
    write_tsv(root / "sst2" / "validation.tsv", [(text, 1 - label) for text, label in sentiment_rows(64, seed=2)])
    return root


@pytest.fixture(scope="module")
def flipped_run(tmp_path_factory, tiny_bert, flipped_dir) -> Path:
    tmp = tmp_path_factory.mktemp("flipped-run")
    recipe = write_recipe(tmp / "r.py", tiny_bert, method="LoRA(r=8, alpha=16, target='all-linear')",
                          train="epochs=8, lr=1e-2, batch_size=16, logging_steps=4")
    return run_recipe(tmp, recipe, flipped_dir)


def _records(run: Path, name: str = "predictions.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def test_checkpoint_is_chosen_on_the_selection_split_never_on_the_reported_one(flipped_run):
    metrics = json.loads((flipped_run / "metrics.json").read_text())
    protocol = metrics["protocol"]
    assert protocol["parts"]["selection"] == {"split": "train", "examples": 26, "of": 256}
    assert protocol["parts"]["train"] == {"split": "train", "examples": 230, "of": 256}
    assert protocol["parts"]["reported"] == {"split": "validation", "examples": 64, "of": 64}
    evals = [e for e in json.loads((flipped_run / "log_history.json").read_text()) if "eval_accuracy" in e]
    assert len(evals) == protocol["evaluations"] >= 4
    selected = next(e for e in evals if e["step"] == protocol["selected_step"] == metrics["best_step"])
    assert selected["eval_accuracy"] == max(e["eval_accuracy"] for e in evals)
    # evaluations during training saw the selection split (learnt: high), the reported split was scored after
    # (flipped: low); had training evaluated on validation, the logged accuracies would be the low ones
    assert selected["eval_accuracy"] > 0.6 and metrics["task_metrics"]["accuracy"] < 0.4
    assert metrics["selection_metrics"]["accuracy"] == selected["eval_accuracy"]


def test_predictions_reproduce_the_metrics(flipped_run):
    metrics = json.loads((flipped_run / "metrics.json").read_text())
    records = _records(flipped_run)
    assert [r["id"] for r in records] == list(range(64))  # row numbers of validation.tsv
    assert set(records[0]) == {"id", "gold", "prediction", "probs", "text"}
    assert sum(records[0]["probs"]) == pytest.approx(1.0) and records[0]["gold"] in ("negative", "positive")
    scored = get_task("classification").score_predictions(records)
    assert scored == pytest.approx({k: metrics["task_metrics"][k] for k in scored}) and set(scored) == {"accuracy",
                                                                                                        "macro_f1"}


def test_report_shows_intervals_protocol_errors_and_the_training_curve(flipped_run):
    report = (flipped_run / "report.md").read_text()
    assert "95 % CI" in report and "## Protocol" in report and "checkpoint selection" in report
    assert "Confusion matrix" in report and "Most confident mistakes" in report
    assert "![training curve](training_curve.png)" in report
    assert (flipped_run / "training_curve.png").read_bytes().startswith(b"\x89PNG")
    accuracy = json.loads((flipped_run / "metrics.json").read_text())["task_metrics"]["accuracy"]
    low, high = (float(x) for x in report.split("| accuracy | ")[1].split("|")[1].strip(" []").split(","))
    assert low <= accuracy <= high and high - low > 0.05  # 64 examples: a wide interval


def test_subsets_are_the_same_for_every_training_seed(tmp_path, tiny_bert, data_dir):
    runs = []
    for seed in (0, 1):
        recipe = write_recipe(tmp_path / f"r{seed}.py", tiny_bert, name=f"seed{seed}",
                              train=f"epochs=1, lr=1e-2, batch_size=16, seed={seed}, logging_steps=4",
                              extra="", imports="")
        recipe.write_text(recipe.read_text().replace("max_length=32)", "max_length=32, train_limit=100, "
                                                                       "eval_limit=30)"))
        runs.append(run_recipe(tmp_path / f"s{seed}", recipe, data_dir))
    protocols = [json.loads((run / "metrics.json").read_text())["protocol"] for run in runs]
    assert protocols[0]["parts"] == protocols[1]["parts"]
    assert protocols[0]["parts"]["train"]["examples"] == 100 and protocols[0]["parts"]["reported"]["examples"] == 30
    ids = [[r["id"] for r in _records(run)] for run in runs]
    assert ids[0] == ids[1] and len(ids[0]) == 30
    texts = [[r["text"] for r in _records(run)] for run in runs]
    assert texts[0] == texts[1]
    # the training seed still matters where it should: the two runs trained differently
    assert [r["probs"] for r in _records(runs[0])] != [r["probs"] for r in _records(runs[1])]

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
    assert splits.sizes == {"selection": {"split": "train", "examples": 64, "of": 256},
                            "train": {"split": "train", "examples": 100, "of": 256},
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
    with pytest.raises(PeftlabError, match=r"data.selection=256: the train split has only 256 examples"):
        data_stage.load_splits(Data("sst2", text="sentence", selection=256), data_dir)

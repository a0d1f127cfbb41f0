"""Regression on a sentence or sentence pair (STS-B): one output, MSE loss; Pearson and Spearman correlation."""

from __future__ import annotations

import math

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from ..data import require_columns
from ..errors import PeftlabError, check
from ..metrics import correlation
from . import mixed
from .classification import collator, columns, encode_texts, input_texts, logits_of  # noqa: F401 — inputs and padding as classification

MODEL_CLASS = AutoModelForSequenceClassification
PEFT_TASK_TYPE = "SEQ_CLS"
BEST_METRIC = "pearson"
HEADS = ("classifier", "score")

def labels(recipe, train) -> list[str]:
    """One output, named after the target column (it names the score in predictions and the saved config)."""
    require_columns(train, columns(recipe), "train")
    check(recipe.model.labels is None, "model.labels: a regression model has a single output and no label names; "
                                       "remove labels from the recipe")
    return [recipe.data.label]


def model_kwargs(label_names: list[str]) -> dict:
    # problem_type makes the *ForSequenceClassification head use MSE on one output
    return {"num_labels": 1, "problem_type": "regression", "id2label": {0: label_names[0]},
            "label2id": {label_names[0]: 0}}


def _targets(values, column: str, indices, split: str) -> list[float]:
    targets = []
    for value, row in zip(values, indices):
        try:
            target = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            target = math.nan
        if not math.isfinite(target):
            raise PeftlabError(f"{split} split, row {row}: {column}={value!r} is not a number; "
                               "fix that row or set data.label to the numeric target column")
        targets.append(target)
    return targets


def prepare(dataset, tokenizer, recipe, label_names: list[str], split: str):
    data = recipe.data
    require_columns(dataset, columns(recipe), split)

    def encode(batch, indices):
        for column in [data.text] + ([data.text_pair] if data.text_pair else []):
            empty = [i for i, t in zip(indices, batch[column]) if not isinstance(t, str) or not t.strip()]
            check(not empty, f"{split} split, row {empty[0] if empty else ''}: empty text in column '{column}'; "
                             "remove or fill those rows")
        pair = batch[data.text_pair] if data.text_pair else None
        encoded = tokenizer(batch[data.text], pair, truncation=True, max_length=data.max_length)
        encoded["labels"] = [t / data.label_scale for t in _targets(batch[data.label], data.label, indices, split)]
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]  # for length-grouped batches
        encoded["example_id"] = indices  # features are sorted below: records map them back
        return encoded

    # sorted by length: evaluation runs in dataset order (training.InOrderEvalTrainer), and batches of similar
    # length pad little (500 STS-B validation pairs: 3.5 s instead of 8.0 s); predictions and labels keep their pairing
    return dataset.map(encode, batched=True, with_indices=True, remove_columns=dataset.column_names,
                       desc=f"tokenizing {split}").sort("length")


def records_for(eval_ds, raw_eval, label_names: list[str], recipe):
    """Per-example records (see tasks/__init__.py): gold and predicted scores on the data's scale. Gold comes
    from the data, not from the features' labels: target / label_scale in float32 would not give it back exactly."""
    example_ids, scale, texts = eval_ds["example_id"], recipe.data.label_scale, input_texts(raw_eval, recipe.data)
    gold = _targets(raw_eval[recipe.data.label], recipe.data.label, range(len(raw_eval)), "evaluation")

    def records(eval_pred) -> list[dict]:
        scores = np.asarray(logits_of(eval_pred.predictions), dtype=np.float64).reshape(-1) * scale
        return sorted(({"id": e, "gold": gold[e], "prediction": float(s), **texts[e]}
                       for e, s in zip(example_ids, scores)), key=lambda r: r["id"])

    return records


def score_predictions(records: list[dict]) -> dict:
    return correlation([r["prediction"] for r in records], [r["gold"] for r in records])


@torch.no_grad()
def predict(model, tokenizer, texts: list[str], label_names: list[str], max_length: int = 128,
            label_scale: float = 1.0, adapter_names: list[str] | None = None) -> list[dict]:
    """A text holding a TAB is a sentence pair (classification.encode_texts). Scores come back on the data's scale
    (the model learned target / label_scale)."""
    model.eval()
    scores = model(**encode_texts(tokenizer, texts, max_length, model.device),
                   **mixed(adapter_names)).logits.float().reshape(-1)
    return [{"text": t, label_names[0]: float(s) * label_scale} for t, s in zip(texts, scores)]

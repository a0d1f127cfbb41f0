"""Sequence classification (single sentence or sentence pair): accuracy and macro-F1."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from ..data import require_columns
from ..errors import check
from ..metrics import classification_scores
from . import mixed

MODEL_CLASS = AutoModelForSequenceClassification
PEFT_TASK_TYPE = "SEQ_CLS"
BEST_METRIC = "accuracy"
HEADS = ("classifier", "score")


def columns(recipe) -> list[str]:
    data = recipe.data
    return [data.text, data.label] + ([data.text_pair] if data.text_pair else [])


def labels(recipe, train) -> list[str]:
    """Label names from the recipe, or else the sorted distinct values of the training labels."""
    data = recipe.data
    require_columns(train, columns(recipe), "train")
    if recipe.model.labels:
        return list(recipe.model.labels)
    return [str(v) for v in sorted(set(train[data.label]))]


def model_kwargs(label_names: list[str]) -> dict:
    return {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
            "label2id": {name: i for i, name in enumerate(label_names)}}


def label_ids(values, label_names: list[str], where: str) -> list[int]:
    """Class ids from label values given as ids (Hub data) or as names (local files), checked against the set."""
    index = {name: i for i, name in enumerate(label_names)}
    ids = []
    for value in values:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            check(0 <= value < len(label_names),
                  f"{where}: label {value} outside 0..{len(label_names) - 1}; fix the data or model.labels")
            ids.append(int(value))
        else:
            check(str(value) in index, f"{where}: label {value!r} is not in the label set {label_names}; "
                                       "fix the data or model.labels")
            ids.append(index[str(value)])
    return ids


def prepare(dataset, tokenizer, recipe, label_names: list[str], split: str):
    data = recipe.data
    require_columns(dataset, columns(recipe), split)

    def encode(batch, indices):
        for column in [data.text] + ([data.text_pair] if data.text_pair else []):
            empty = [i for i, t in enumerate(batch[column]) if not isinstance(t, str) or not t.strip()]
            check(not empty, f"{split} split: empty text in column '{column}'; remove or fill those rows")
        pair = batch[data.text_pair] if data.text_pair else None
        encoded = tokenizer(batch[data.text], pair, truncation=True, max_length=data.max_length)
        encoded["labels"] = label_ids(batch[data.label], label_names, f"{split} split")
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]  # for length-grouped batches
        encoded["example_id"] = indices  # evaluation reorders features (speed.evaluation_order): records need it
        return encoded

    return dataset.map(encode, batched=True, with_indices=True, remove_columns=dataset.column_names,
                       desc=f"tokenizing {split}")


def collator(tokenizer):
    return DataCollatorWithPadding(tokenizer)  # pads each batch to its own longest sequence


def logits_of(predictions):
    """The logits among Trainer's predictions (a tuple when the model returns more than logits)."""
    return predictions[0] if isinstance(predictions, tuple) else predictions


def input_texts(raw, data) -> list[dict]:
    """The input text (and the pair's second text) of each example, for records a reader can check."""
    pairs = raw[data.text_pair] if data.text_pair else [None] * len(raw)
    return [{"text": t} | ({"text_pair": p} if p is not None else {}) for t, p in zip(raw[data.text], pairs)]


def records_for(eval_ds, raw_eval, label_names: list[str], recipe):
    """Per-example records of an evaluation of eval_ds (see tasks/__init__.py)."""
    from scipy.special import softmax

    example_ids, texts = eval_ds["example_id"], input_texts(raw_eval, recipe.data)

    def records(eval_pred) -> list[dict]:
        probs = softmax(np.asarray(logits_of(eval_pred.predictions), dtype=np.float64), axis=-1)
        rows = [{"id": e, "gold": label_names[gold], "prediction": label_names[int(p.argmax())],
                 "probs": p.tolist(), **texts[e]} for e, gold, p in zip(example_ids, eval_pred.label_ids, probs)]
        return sorted(rows, key=lambda r: r["id"])

    return records


def score_predictions(records: list[dict]) -> dict:
    index = {name: i for i, name in enumerate(sorted({r[k] for r in records for k in ("gold", "prediction")}))}
    predictions, references = [index[r["prediction"]] for r in records], [index[r["gold"]] for r in records]
    return classification_scores(predictions, references)


def encode_texts(tokenizer, texts: list[str], max_length: int, device) -> dict:
    """One padded batch of texts; a text holding a TAB is a sentence pair, as in the data files:
    "A man plays.<TAB>Someone plays." """
    pairs = [t.split("\t", 1) if "\t" in t else [t, None] for t in texts]
    firsts, seconds = [p[0] for p in pairs], [p[1] for p in pairs]
    check(all(s is None for s in seconds) or all(s is not None for s in seconds),
          "give either all texts as sentence pairs (separated by a TAB) or none")
    batch = tokenizer(firsts, None if seconds[0] is None else seconds, truncation=True, max_length=max_length,
                      padding=True, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def predict(model, tokenizer, texts: list[str], label_names: list[str], max_length: int = 128,
            adapter_names: list[str] | None = None) -> list[dict]:
    model.eval()
    logits = model(**encode_texts(tokenizer, texts, max_length, model.device), **mixed(adapter_names)).logits
    probs = torch.softmax(logits.float(), dim=-1)
    best = probs.argmax(dim=-1)
    return [{"text": t, "label": label_names[int(i)], "probability": float(p[i])}
            for t, i, p in zip(texts, best, probs)]

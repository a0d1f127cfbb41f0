"""Token classification with BIO tags (named entities, WNUT-17): entity-level precision, recall and F1.

Rows hold a list of words (data.text, e.g. "tokens") and one tag per word (data.label, e.g. "tags"). The model
sees word pieces; each word's tag goes on its first piece and the other pieces are ignored (-100) in the loss
and in scoring, so a word counts once whatever the tokenizer does with it. Words cut off by max_length are
not scored (as in transformers' run_ner).
"""

from __future__ import annotations

import re

import numpy as np
import torch
from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

from ..data import require_columns
from ..errors import check
from ..metrics import entity_scores, entity_spans
from . import mixed, require_fast_tokenizer
from .classification import label_ids, logits_of

MODEL_CLASS = AutoModelForTokenClassification
PEFT_TASK_TYPE = "TOKEN_CLS"
BEST_METRIC = "f1"
HEADS = ("classifier", "score")
IGNORE = -100  # label id the loss and the metrics skip


def columns(recipe) -> list[str]:
    return [recipe.data.text, recipe.data.label]


def _class_names(dataset, column: str) -> list[str] | None:
    """Tag names of a Hub dataset storing tags as class ids (Sequence(ClassLabel)), else None."""
    feature = getattr(dataset.features[column], "feature", None)
    return list(feature.names) if hasattr(feature, "names") else None


def labels(recipe, train) -> list[str]:
    """Tag names from the recipe, the dataset's class names, or the sorted distinct tags of train with "O" first."""
    data = recipe.data
    require_columns(train, columns(recipe), "train")
    names = recipe.model.labels or _class_names(train, data.label)
    if names is None:
        distinct = {str(tag) for tags in train[data.label] for tag in tags}
        names = sorted(distinct, key=lambda tag: (tag != "O", tag))
    bad = [n for n in names if n != "O" and not re.fullmatch(r"[BI]-.+", n)]
    check(not bad, f"tags {bad[:3]} are not BIO tags ('O', 'B-<type>', 'I-<type>'); entity scoring needs BIO: "
                   "convert the data or fix model.labels")
    return list(names)


def model_kwargs(label_names: list[str]) -> dict:
    return {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
            "label2id": {name: i for i, name in enumerate(label_names)}}


def align(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Label per word piece: the word's label on its first piece; IGNORE on later pieces and special tokens."""
    aligned, previous = [], None
    for word in word_ids:
        aligned.append(IGNORE if word is None or word == previous else word_labels[word])
        previous = word
    return aligned


def prepare(dataset, tokenizer, recipe, label_names: list[str], split: str):
    data = recipe.data
    require_columns(dataset, columns(recipe), split)
    require_fast_tokenizer(tokenizer, "token_classification", "word ids (to align tags to word pieces)")

    def encode(batch, indices):
        encoded = tokenizer(batch[data.text], is_split_into_words=True, truncation=True, max_length=data.max_length)
        encoded["labels"] = []
        for i, (row, words, tags) in enumerate(zip(indices, batch[data.text], batch[data.label])):
            where = f"{split} split, sentence {row}"
            check(len(words) == len(tags), f"{where}: {len(words)} words but {len(tags)} tags; fix the data")
            encoded["labels"].append(align(encoded.word_ids(i), label_ids(tags, label_names, where)))
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]  # for length-grouped batches
        encoded["example_id"] = indices  # features are sorted below: records map them back
        return encoded

    # sorted by length: evaluation runs in dataset order (training.InOrderEvalTrainer), and batches of similar
    # length pad little; predictions and labels keep their pairing
    return dataset.map(encode, batched=True, with_indices=True, remove_columns=dataset.column_names,
                       desc=f"tokenizing {split}").sort("length")


def collator(tokenizer):
    return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE)  # pads labels with IGNORE too


def records_for(eval_ds, raw_eval, label_names: list[str], recipe):
    """Per-example records (see tasks/__init__.py): gold and predicted tags of the scored words (the first pieces),
    and the probability of each predicted tag."""
    from scipy.special import softmax

    example_ids, words = eval_ds["example_id"], raw_eval[recipe.data.text]

    def records(eval_pred) -> list[dict]:
        probs = softmax(np.asarray(logits_of(eval_pred.predictions), dtype=np.float64), axis=-1)
        rows = []
        for example, row_probs, references in zip(example_ids, probs, eval_pred.label_ids):
            keep = references != IGNORE  # first pieces of words only (batches are padded with IGNORE as well)
            best = row_probs[keep].argmax(-1)
            rows.append({"id": example, "words": list(words[example]),
                         "gold": [label_names[t] for t in references[keep]],
                         "prediction": [label_names[t] for t in best],
                         "confidence": [round(float(p), 6) for p in row_probs[keep].max(-1)]})
        return sorted(rows, key=lambda r: r["id"])

    return records


def score_predictions(records: list[dict]) -> dict:
    return entity_scores([r["prediction"] for r in records], [r["gold"] for r in records])


@torch.no_grad()
def predict(model, tokenizer, texts: list[str], label_names: list[str], max_length: int = 128,
            adapter_names: list[str] | None = None) -> list[dict]:
    """Entities in raw sentences, one padded batch. Words are split at whitespace, as the training data was given
    word by word; a word's tag is its first sub-token's."""
    model.eval()
    words = [list(re.finditer(r"\S+", text)) for text in texts]
    check(all(words), "an empty text has no entities: give a sentence")
    batch = tokenizer([[w.group() for w in ws] for ws in words], is_split_into_words=True, truncation=True,
                      max_length=max_length, padding=True, return_tensors="pt")
    inputs = {k: v.to(model.device) for k, v in batch.items()}
    best = model(**inputs, **mixed(adapter_names)).logits.argmax(-1).tolist()
    rows = []
    for i, (text, ws) in enumerate(zip(texts, words)):
        word_ids = batch.word_ids(i)
        tags = ["O"] * len(ws)  # words beyond max_length stay "O"
        for position, word in enumerate(word_ids):
            if word is not None and (position == 0 or word_ids[position - 1] != word):
                tags[word] = label_names[best[i][position]]
        entities = [{"text": text[ws[s].start():ws[e - 1].end()], "type": kind,
                     "start": ws[s].start(), "end": ws[e - 1].end()} for kind, s, e in entity_spans(tags)]
        rows.append({"text": text, "entities": entities, "tags": tags})
    return rows

"""Extractive question answering (SQuAD v1.1): the answer is a span of the context; exact match and F1.

Rows hold a question (data.text), a context (data.text_pair) and answers (data.label) as SQuAD stores them:
{"text": [...], "answer_start": [...]} (character offsets). A context longer than a window of max_length
tokens is read in several windows sharing data.stride tokens; each window is a feature of its own.
Training labels a window with the first answer's start and end tokens, or with the CLS token when the answer
is not wholly inside it. Evaluation tries the n_best starts x n_best ends of every window of an example and
keeps the best-scoring span (start logit + end logit) of at most max_answer_length tokens. For that the
evaluation features keep `example_id` and `offset_mapping` (character offsets, None outside the context);
Trainer drops both from the model's batches since they are not forward() arguments.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering

from ..data import require_columns
from ..errors import check
from ..metrics import squad_means, squad_per_question
from ..stats import Additive
from . import require_fast_tokenizer

MODEL_CLASS = AutoModelForQuestionAnswering
PEFT_TASK_TYPE = "QUESTION_ANS"
BEST_METRIC = "f1"
HEADS = ("qa_outputs",)
MODEL_INPUTS = ("input_ids", "attention_mask")


def columns(recipe) -> list[str]:
    data = recipe.data
    check(data.text_pair is not None, "data.text_pair: qa reads a question and a context; set e.g. "
                                      "Data(text='question', text_pair='context', label='answers')")
    return [data.text, data.text_pair, data.label]


def labels(recipe, train) -> list[str]:
    require_columns(train, columns(recipe), "train")
    return []  # spans, not classes


def model_kwargs(label_names: list[str]) -> dict:
    return {}


def _answer_spans(answers, context: str, where: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the answers, each checked against its context."""
    check(isinstance(answers, dict) and {"text", "answer_start"} <= set(answers),
          f"{where}: answers must look like {{'text': [...], 'answer_start': [...]}}, got {str(answers)[:80]}")
    check(len(answers["text"]) > 0, f"{where}: no answer; unanswerable questions (SQuAD v2) are not supported")
    spans = []
    for text, start in zip(answers["text"], answers["answer_start"]):
        found = context[start:start + len(text)]
        check(found == text, f"{where}: answer {text!r} at answer_start={start} does not match the context there "
                             f"({found!r}); fix answer_start")
        spans.append((start, start + len(text)))
    return spans


def _check_room(tokenizer, questions: list[str], rows, max_length: int, stride: int, where: str) -> None:
    """Every window must hold the question, the overlap and at least one new context token."""
    room = max_length - stride - tokenizer.num_special_tokens_to_add(pair=True)
    lengths = [len(ids) for ids in tokenizer([q.lstrip() for q in questions], add_special_tokens=False)["input_ids"]]
    for row, n in zip(rows, lengths):
        check(n < room, f"{where}, row {row}: the question has {n} tokens, leaving no new context in a window of "
                        f"data.max_length={max_length} with data.stride={stride}; raise max_length or lower stride")


def _windows(tokenizer, questions: list[str], contexts: list[str], max_length: int, stride: int, **kwargs):
    # Leading spaces of some SQuAD questions would only take room. No token_type_ids: peft's QA wrapper
    # (PeftModelForQuestionAnswering.forward) does not pass them on, so without them every method, and a
    # merged export, sees the same inputs.
    return tokenizer([q.lstrip() for q in questions], contexts, truncation="only_second", max_length=max_length,
                     stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                     return_token_type_ids=False, **kwargs)


def _context_offsets(encoding, feature: int) -> list:
    """Character offsets of one window, None for the question and special tokens (never part of an answer)."""
    return [(int(o[0]), int(o[1])) if s == 1 else None
            for o, s in zip(encoding["offset_mapping"][feature], encoding.sequence_ids(feature))]


def token_span(offsets: list, start_char: int, end_char: int) -> tuple[int, int] | None:
    """First and last token of the answer [start_char, end_char) in one window; None if not wholly inside."""
    context = [t for t, o in enumerate(offsets) if o is not None]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return None
    return (max(t for t in context if offsets[t][0] <= start_char),
            min(t for t in context if offsets[t][1] >= end_char))


def prepare(dataset, tokenizer, recipe, label_names: list[str], split: str):
    data = recipe.data
    require_columns(dataset, columns(recipe), split)
    require_fast_tokenizer(tokenizer, "qa", "character offsets")

    def encode(batch, indices):
        contexts = batch[data.text_pair]
        for column in (data.text, data.text_pair):
            empty = [row for row, t in zip(indices, batch[column]) if not isinstance(t, str) or not t.strip()]
            check(not empty, f"{split} split, row {empty[0] if empty else ''}: empty text in column '{column}'; "
                             "remove or fill that row")
        spans = [_answer_spans(a, c, f"{split} split, row {row}")
                 for a, c, row in zip(batch[data.label], contexts, indices)]
        _check_room(tokenizer, batch[data.text], indices, data.max_length, data.stride, f"{split} split")
        encoded = _windows(tokenizer, batch[data.text], contexts, data.max_length, data.stride)
        sample = encoded.pop("overflow_to_sample_mapping")
        offsets = [_context_offsets(encoded, f) for f in range(len(sample))]
        starts, ends = [], []
        for f, example in enumerate(sample):
            cls = encoded["input_ids"][f].index(tokenizer.cls_token_id) if tokenizer.cls_token_id is not None else 0
            start, end = token_span(offsets[f], *spans[example][0]) or (cls, cls)  # the first answer is the target
            starts.append(start)
            ends.append(end)
        return {**encoded, "offset_mapping": offsets, "example_id": [indices[i] for i in sample],
                "start_positions": starts, "end_positions": ends,
                "length": [len(ids) for ids in encoded["input_ids"]]}  # for length-grouped batches

    features = dataset.map(encode, batched=True, with_indices=True, remove_columns=dataset.column_names,
                           desc=f"tokenizing {split}")
    # evaluation runs in dataset order (decoding needs it, see training.InOrderEvalTrainer): sorted by length,
    # its batches pad little; example_id and offsets travel with each feature, so decoding does not mind
    return features.sort("length")


def collator(tokenizer):
    def collate(features):  # offsets and example ids are for decoding; they never go to the model
        kept = [{k: v for k, v in f.items() if k not in ("offset_mapping", "example_id")} for f in features]
        # start/end positions count from the left: pad on the right whatever the tokenizer's default side
        return tokenizer.pad(kept, padding=True, return_tensors="pt", padding_side="right")

    return collate


def best_span(start_logits, end_logits, offsets: np.ndarray, n_best: int, max_answer_length: int):
    """(score, start_char, end_char) of the best span in one window, or None. offsets: (tokens, 2), -1 outside
    the context; logits may be longer (Trainer pads batches), positions past the window are never chosen."""
    n = len(offsets)
    start_logits, end_logits = np.asarray(start_logits[:n]), np.asarray(end_logits[:n])
    starts, ends = np.argsort(-start_logits)[:n_best], np.argsort(-end_logits)[:n_best]
    length = ends[None, :] - starts[:, None] + 1
    valid = (offsets[starts, 0][:, None] >= 0) & (offsets[ends, 0][None, :] >= 0) & (length >= 1) \
        & (length <= max_answer_length)
    if not valid.any():
        return None
    scores = np.where(valid, start_logits[starts][:, None] + end_logits[ends][None, :], -np.inf)
    i, j = np.unravel_index(np.argmax(scores), scores.shape)
    return float(scores[i, j]), int(offsets[starts[i], 0]), int(offsets[ends[j], 1])


def decode(start_logits, end_logits, example_ids, offsets, contexts: list[str], n_best: int,
           max_answer_length: int) -> list[dict]:
    """Best answer of every example over all its windows: {"answer", "score", "start", "end"}."""
    best = {}
    for f, example in enumerate(example_ids):
        span = best_span(start_logits[f], end_logits[f], offsets[f], n_best, max_answer_length)
        if span is not None and (example not in best or span[0] > best[example][0]):
            best[example] = span
    answers = []
    for i, context in enumerate(contexts):
        score, start, end = best.get(i, (float("-inf"), 0, 0))  # no valid span in any window: the empty answer
        answers.append({"answer": context[start:end], "score": score, "start": start, "end": end})
    return answers


def _offset_array(offsets: list) -> np.ndarray:
    return np.array([o if o is not None else (-1, -1) for o in offsets], dtype=np.int64).reshape(-1, 2)


def records_for(eval_ds, raw_eval, label_names: list[str], recipe):
    """Per-example records (see tasks/__init__.py). Trainer's predictions are logits per window; decoding needs the
    features and examples, held here."""
    data = recipe.data
    table = eval_ds.select_columns(["example_id", "offset_mapping"])
    example_ids = table["example_id"]
    offsets = [_offset_array(row["offset_mapping"]) for row in table]  # compact: ints, not Python tuples
    contexts = raw_eval[data.text_pair]
    references = [answers["text"] for answers in raw_eval[data.label]]
    questions = raw_eval[data.text]

    def records(eval_pred) -> list[dict]:
        start_logits, end_logits = eval_pred.predictions[:2]
        check(len(start_logits) == len(example_ids), f"qa: {len(start_logits)} predictions for {len(example_ids)} "
                                                     "evaluation features; evaluate the dataset given to records_for")
        predicted = decode(start_logits, end_logits, example_ids, offsets, contexts, data.n_best,
                           data.max_answer_length)
        return [{"id": i, "gold": list(gold), "prediction": p["answer"],
                 "score": p["score"] if math.isfinite(p["score"]) else None,  # no valid span: no score (JSON)
                 "question": question} for i, (gold, p, question) in enumerate(zip(references, predicted, questions))]

    return records


# Additive: a bootstrap of 5,609 questions x 1,000 resamples rescored every answer (minutes per run)
score_predictions = Additive(
    lambda records: squad_per_question([r["prediction"] for r in records], [r["gold"] for r in records]),
    squad_means)


@torch.no_grad()
def predict(model, tokenizer, texts: list[str], label_names: list[str], max_length: int = 384, context=None,
            stride: int = 128, n_best: int = 20, max_answer_length: int = 30) -> list[dict]:
    """Answer each question (texts) from its context: one passage for all of them, or a list of one per question."""
    contexts = [context] * len(texts) if context is None or isinstance(context, str) else list(context)
    check(all(c and c.strip() for c in contexts), "qa: give the passage the questions are about with --context")
    model.eval()
    _check_room(tokenizer, texts, range(len(texts)), max_length, stride, "question")
    encoded = _windows(tokenizer, texts, contexts, max_length, stride, padding=True, return_tensors="pt")
    offsets = [_offset_array(_context_offsets(encoded, f)) for f in range(len(encoded["input_ids"]))]
    out = model(**{k: encoded[k].to(model.device) for k in MODEL_INPUTS})
    answers = decode(out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy(),
                     encoded["overflow_to_sample_mapping"].tolist(), offsets, contexts, n_best, max_answer_length)
    return [{"question": q, **a} for q, a in zip(texts, answers)]

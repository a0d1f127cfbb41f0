"""Task metrics as plain functions of predictions and references, computed locally with scikit-learn / scipy.

Not `evaluate.load("accuracy")`: it downloads its metric script from the Hub and fails offline. Not
`evaluate.Metric` subclasses either (what this module held before): every call builds Arrow tables and a cache
file, ~40 ms of overhead, and a bootstrap interval scores 1,000 resamples of a run's records (peftlab/stats.py),
which made one SST-2 interval take 80 s instead of about 2 s.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


def classification_scores(predictions, references) -> dict:
    """Accuracy and macro-F1 (the unweighted mean of per-class F1 over the classes present, as scikit-learn's
    f1_score(average="macro", zero_division=0) gives it) of class ids. Counted with numpy: scikit-learn's input
    checks cost 15-25 ms a call, and a bootstrap interval scores 1,000 resamples."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    classes = np.union1d(predictions, references)
    hits = np.array([np.sum((predictions == c) & (references == c)) for c in classes])
    counted = np.array([np.sum(predictions == c) + np.sum(references == c) for c in classes])
    return {"accuracy": float(np.mean(predictions == references)), "macro_f1": float(np.mean(2 * hits / counted))}


def correlation(predictions, references) -> dict:
    """Pearson and Spearman correlation of predicted and reference scores (STS-B's official metrics)."""
    from scipy.stats import pearsonr, spearmanr

    # constant predictions (an untrained head can give them) have no correlation: scipy says nan; report 0,
    # so best-model selection still compares numbers
    if len(set(predictions)) < 2 or len(set(references)) < 2:
        return {"pearson": 0.0, "spearman": 0.0}
    pearson, spearman = float(pearsonr(predictions, references)[0]), float(spearmanr(predictions, references)[0])
    return {"pearson": 0.0 if math.isnan(pearson) else pearson, "spearman": 0.0 if math.isnan(spearman) else spearman}


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, start, end) of each entity in one BIO-tagged sentence, end exclusive, as seqeval's default mode
    reads them: an entity starts at B-X, or at I-X after O or after another type, and runs while I-X follows."""
    spans, start, kind = [], 0, None
    for i, tag in enumerate([*tags, "O"]):  # the "O" sentinel closes an entity at the end
        prefix, kind_here = tag[:2], tag[2:]
        if kind is not None and (prefix != "I-" or kind_here != kind):
            spans.append((kind, start, i))
            kind = None
        if prefix in ("B-", "I-") and kind is None:
            start, kind = i, kind_here
    return spans


def _prf(hits: int, predicted: int, gold: int) -> tuple[float, float, float]:
    precision = hits / predicted if predicted else 0.0
    recall = hits / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


@lru_cache(maxsize=1 << 16)  # a bootstrap scores the same sentences 1,000 times
def _sentence_counts(predicted: tuple[str, ...], gold: tuple[str, ...]) -> tuple[dict, int]:
    """One sentence: per entity type [hits, predicted, gold entities], and its correctly tagged words."""
    spans = set(entity_spans(list(predicted))), set(entity_spans(list(gold)))
    counts = {kind: [sum(s[0] == kind for s in group) for group in (spans[0] & spans[1], *spans)]
              for kind in {s[0] for s in spans[0] | spans[1]}}
    return counts, sum(p == g for p, g in zip(predicted, gold))


def entity_scores(predictions: list[list[str]], references: list[list[str]]) -> dict:
    """Entity-level precision/recall/F1 (exact type and boundaries) over all sentences, token accuracy, and
    per type `precision_<type>`, `recall_<type>`, `f1_<type>`, `support_<type>` (gold entities): flat keys,
    since Trainer logs only scalars. Counted per sentence and summed (an entity never crosses sentences)."""
    totals, correct = {}, 0
    for pred, ref in zip(predictions, references):
        counts, right = _sentence_counts(tuple(pred), tuple(ref))
        correct += right
        for kind, values in counts.items():
            totals[kind] = [t + v for t, v in zip(totals.get(kind, (0, 0, 0)), values)]
    overall = [sum(values[i] for values in totals.values()) for i in range(3)]
    tokens = sum(len(tags) for tags in references)
    precision, recall, f1 = _prf(*overall)
    scores = {"precision": precision, "recall": recall, "f1": f1, "accuracy": correct / tokens if tokens else 0.0}
    for kind in sorted(totals):
        p, r, f = _prf(*totals[kind])
        scores |= {f"precision_{kind}": p, f"recall_{kind}": r, f"f1_{kind}": f, f"support_{kind}": totals[kind][2]}
    return scores


@lru_cache(maxsize=1 << 16)  # exact match and F1 normalise each answer again
def normalize_answer(text: str) -> str:
    """The official SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces."""
    import re
    import string

    punctuation = set(string.punctuation)
    text = "".join(ch for ch in text.lower() if ch not in punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def answer_f1(prediction: str, reference: str) -> float:
    """Bag-of-tokens F1 between normalised answers (official SQuAD v1.1 script)."""
    from collections import Counter

    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_per_question(predictions: list[str], references: list[list[str]]) -> dict[str, np.ndarray]:
    """Each question's exact match and F1 (the max over its reference answers), and a count of 1: SQuAD's scores
    are means of these, so a bootstrap sums resampled rows (stats.Additive) instead of rescoring answers."""
    exact = [max(normalize_answer(p) == normalize_answer(r) for r in refs) for p, refs in zip(predictions, references)]
    f1 = [max(answer_f1(p, r) for r in refs) for p, refs in zip(predictions, references)]
    return {"exact_match": np.array(exact, dtype=float), "f1": np.array(f1, dtype=float),
            "questions": np.ones(len(predictions))}


def squad_means(sums: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    questions = np.maximum(sums["questions"], 1)
    return {"exact_match": sums["exact_match"] / questions, "f1": sums["f1"] / questions}


def squad_scores(predictions: list[str], references: list[list[str]]) -> dict:
    """SQuAD v1.1 exact match and F1, each the max over an example's reference answers, averaged; as fractions
    in [0, 1] like every other peftlab metric (the official script prints percentages)."""
    sums = {k: v.sum() for k, v in squad_per_question(predictions, references).items()}
    return {k: float(v) for k, v in squad_means(sums).items()}

"""Task metrics as plain functions of predictions and references, computed locally with scikit-learn / scipy.

Not `evaluate.load("accuracy")`: it downloads its metric script from the Hub and fails offline. Not
`evaluate.Metric` subclasses either (what this module held before): every call builds Arrow tables and a cache
file, ~40 ms of overhead, and a bootstrap interval scores 1,000 resamples of a run's records (peftlab/stats.py),
which made one SST-2 interval take 80 s instead of about 2 s.
"""

from __future__ import annotations

import math


def classification_scores(predictions, references) -> dict:
    """Accuracy and macro-F1 (the unweighted mean of per-class F1 over the classes present) of class ids."""
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(references, predictions)),
            "macro_f1": float(f1_score(references, predictions, average="macro", zero_division=0))}


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


def _prf(gold: set, predicted: set) -> tuple[float, float, float]:
    hits = len(gold & predicted)
    precision = hits / len(predicted) if predicted else 0.0
    recall = hits / len(gold) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_scores(predictions: list[list[str]], references: list[list[str]]) -> dict:
    """Entity-level precision/recall/F1 (exact type and boundaries) over all sentences, token accuracy, and
    per type `precision_<type>`, `recall_<type>`, `f1_<type>`, `support_<type>` (gold entities): flat keys,
    since Trainer logs only scalars."""
    gold = {(n, *span) for n, tags in enumerate(references) for span in entity_spans(tags)}
    predicted = {(n, *span) for n, tags in enumerate(predictions) for span in entity_spans(tags)}
    precision, recall, f1 = _prf(gold, predicted)
    tokens = sum(len(tags) for tags in references)
    correct = sum(p == r for pred, ref in zip(predictions, references) for p, r in zip(pred, ref))
    scores = {"precision": precision, "recall": recall, "f1": f1, "accuracy": correct / tokens if tokens else 0.0}
    for kind in sorted({span[1] for span in gold | predicted}):
        gold_kind, predicted_kind = ({s for s in spans if s[1] == kind} for spans in (gold, predicted))
        p, r, f = _prf(gold_kind, predicted_kind)
        scores |= {f"precision_{kind}": p, f"recall_{kind}": r, f"f1_{kind}": f, f"support_{kind}": len(gold_kind)}
    return scores


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


def squad_scores(predictions: list[str], references: list[list[str]]) -> dict:
    """SQuAD v1.1 exact match and F1, each the max over an example's reference answers, averaged; as fractions
    in [0, 1] like every other peftlab metric (the official script prints percentages)."""
    n = max(len(predictions), 1)
    exact = sum(max(normalize_answer(p) == normalize_answer(r) for r in refs) for p, refs in zip(predictions, references))
    f1 = sum(max(answer_f1(p, r) for r in refs) for p, refs in zip(predictions, references))
    return {"exact_match": exact / n, "f1": f1 / n}

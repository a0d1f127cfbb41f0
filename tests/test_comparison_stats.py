"""The significance-aware Pareto front and the metric-separation check, on records with known accuracies."""

from __future__ import annotations

import numpy as np

from peftlab import comparison_stats as cs
from peftlab import stats


def accuracy(records):
    return {"accuracy": sum(r["correct"] for r in records) / len(records)}


def _variant(p_by_seed: dict[int, float], n: int = 400) -> cs.VariantFigures:
    reps = {}
    for seed, p in p_by_seed.items():
        correct = np.random.default_rng(seed).random(n) < p
        reps[seed] = stats.replicate([{"id": i, "correct": bool(c)} for i, c in enumerate(correct)], accuracy, 300)
    return cs.VariantFigures(stats.pooled_interval(list(reps.values())), {}, reps)


def test_front_ignores_differences_within_noise():
    """Plain Pareto keeps ia3 (cheaper than lora, worse) and full (the best point score); with significance lora
    replaces full (not significantly worse, half the memory) and ia3 (significantly worse, not clearly cheaper:
    48 vs 50 is within the 10 % margin), while prompt stays (clearly cheaper than everything)."""
    figs = {"full": _variant({0: 0.90, 1: 0.90}), "lora": _variant({0: 0.895, 1: 0.89}),
            "ia3": _variant({0: 0.60, 1: 0.62}), "prompt": _variant({0: 0.60, 1: 0.58})}
    # the same seed draws the same examples' coin flips: full and lora differ on a handful of examples only
    costs = {"full": 100.0, "lora": 50.0, "ia3": 48.0, "prompt": 40.0}
    assert cs.significant_front(costs, figs, "accuracy", greater_is_better=True) == ["lora", "prompt"]
    # a really better full fine-tuning stays on the front despite its memory
    figs["full"] = _variant({0: 0.99, 1: 0.99})
    assert cs.significant_front(costs, figs, "accuracy", True) == ["full", "lora", "prompt"]
    # lower is better (perplexity-like): the cheapest, prompt, is now also (within noise) the best
    assert cs.significant_front(costs, figs, "accuracy", greater_is_better=False) == ["prompt"]
    costs["prompt"] = 47.0  # no longer clearly cheaper than ia3, and not significantly lower: both stay
    assert cs.significant_front(costs, figs, "accuracy", greater_is_better=False) == ["ia3", "prompt"]


def test_separates():
    figs = {"a": _variant({0: 0.80}), "b": _variant({1: 0.81})}
    separated, width, spread = cs.separates(figs, "accuracy")
    assert not separated and width > spread  # ±4 pt intervals, 1 pt apart
    figs["c"] = _variant({2: 0.30})
    assert cs.separates(figs, "accuracy")[0]

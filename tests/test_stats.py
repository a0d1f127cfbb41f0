"""Bootstrap intervals and paired tests against cases whose answer is known by hand."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from peftlab import stats
from peftlab.errors import PeftlabError


def _records(correct: list[bool]) -> list[dict]:
    return [{"id": f"ex{i}", "correct": c} for i, c in enumerate(correct)]


def accuracy(records: list[dict]) -> float:
    return sum(r["correct"] for r in records) / len(records)


def _bernoulli(n: int, p: float, seed: int) -> list[bool]:
    rng = np.random.default_rng(seed)
    return list(rng.random(n) < p)


def test_accuracy_interval_matches_the_normal_approximation():
    """n Bernoulli examples: the 95 % interval of their mean is p̂ ± 1.96·sqrt(p̂(1−p̂)/n) (n large)."""
    records = _records(_bernoulli(800, 0.8, seed=1))
    point, low, high = stats.bootstrap_ci(records, accuracy, n=4000, seed=0)
    half = 1.959964 * math.sqrt(point * (1 - point) / len(records))
    assert point == accuracy(records)
    assert low == pytest.approx(point - half, abs=0.004) and high == pytest.approx(point + half, abs=0.004)


def test_identical_predictions_have_p_one_and_an_interval_around_zero():
    records = _records(_bernoulli(200, 0.7, seed=2))
    diff = stats.paired_bootstrap(records, [dict(r) for r in records], accuracy, n=500)
    assert diff.difference == 0 and diff.low <= 0 <= diff.high and diff.p_value == 1.0


def test_clearly_better_variant_is_significant():
    better, worse = _records(_bernoulli(300, 0.9, seed=3)), _records(_bernoulli(300, 0.6, seed=4))
    diff = stats.paired_bootstrap(better, worse, accuracy, n=1000)
    assert diff.difference == pytest.approx(accuracy(better) - accuracy(worse))
    assert diff.p_value < 0.01 and diff.low > 0
    assert stats.paired_bootstrap(worse, better, accuracy, n=1000).high < 0  # the sign follows a − b


def test_a_small_difference_is_not_significant():
    """Two variants that differ on 2 of 400 examples (a right, b wrong): a resample leaves both out with
    probability (1 − 2/400)^400 ≈ e^−2 ≈ 13.5 %, so Δ* = 0 that often: p ≈ 0.27 and the interval starts at 0."""
    a = [True, True] + _bernoulli(398, 0.8, seed=5)
    b = [False, False] + a[2:]
    diff = stats.paired_bootstrap(_records(a), _records(b), accuracy, n=1000)
    assert diff.difference == pytest.approx(2 / 400) and diff.low == 0 and 0.15 < diff.p_value < 0.4


def test_ratio_to_the_baseline_comes_from_the_same_draws():
    """a = b except on 20 of 400 examples that b gets right and a wrong: a ÷ b is 1 + Δ ÷ b in every resample, so its
    interval is Δ's scaled by b's accuracy (which moves little), never above 1; identical runs give exactly 1."""
    b = [True] * 20 + _bernoulli(380, 0.8, seed=6)
    a = [False] * 20 + b[20:]
    diff = stats.paired_bootstrap(_records(a), _records(b), accuracy, n=1000)
    assert diff.ratio.point == pytest.approx(accuracy(_records(a)) / accuracy(_records(b)))
    assert diff.ratio.low < diff.ratio.point < diff.ratio.high <= 1
    assert diff.ratio.low == pytest.approx(1 + diff.low / accuracy(_records(b)), abs=0.005)
    assert diff.ratio.high == pytest.approx(1 + diff.high / accuracy(_records(b)), abs=0.005)
    same = stats.paired_bootstrap(_records(b), _records(b), accuracy, n=200)
    assert tuple(same.ratio) == (1.0, 1.0, 1.0)
    assert stats.paired_bootstrap(_records(b), _records([False] * 400), accuracy, n=200).ratio is None


def test_records_are_matched_by_id_not_position():
    a, b = _records(_bernoulli(100, 0.8, seed=6)), _records(_bernoulli(100, 0.5, seed=7))
    shuffled = random.Random(0).sample(b, len(b))
    assert stats.paired_bootstrap(a, shuffled, accuracy, n=300) == stats.paired_bootstrap(a, b, accuracy, n=300)


def test_deterministic_given_the_seed():
    records = _records(_bernoulli(150, 0.6, seed=8))
    assert stats.bootstrap_ci(records, accuracy, n=300, seed=5) == stats.bootstrap_ci(records, accuracy, n=300, seed=5)
    assert stats.bootstrap_ci(records, accuracy, n=300, seed=5) != stats.bootstrap_ci(records, accuracy, n=300, seed=6)


def test_dict_scores_give_an_interval_per_metric():
    records = _records(_bernoulli(100, 0.7, seed=9))
    result = stats.bootstrap_ci(records, lambda rs: {"accuracy": accuracy(rs), "error": 1 - accuracy(rs)}, n=200)
    assert set(result) == {"accuracy", "error"}
    assert result["error"].low == pytest.approx(1 - result["accuracy"].high)


def test_one_seed_pools_to_the_plain_bootstrap():
    records = _records(_bernoulli(120, 0.7, seed=10))
    assert stats.pooled_ci([records], accuracy, n=300) == stats.bootstrap_ci(records, accuracy, n=300)


def test_pooling_resamples_seeds():
    """Seeds whose every example is right (1) or wrong (0): example resampling changes nothing, so the interval
    is the seed bootstrap alone. Seeds [0, 1, 1]: the mean of 3 draws is 0 with probability (1/3)^3 = 3.7 %
    (> 2.5 %) and 1 with probability (2/3)^3 = 30 %, so the 95 % interval is [0, 1] around the mean 2/3."""
    seeds = [_records([False] * 50), _records([True] * 50), _records([True] * 50)]
    point, low, high = stats.pooled_ci(seeds, accuracy, n=2000)
    assert point == pytest.approx(2 / 3) and (low, high) == (0.0, 1.0)
    same = stats.pooled_ci([seeds[1]] * 3, accuracy, n=2000)
    assert same == (1.0, 1.0, 1.0)


def test_pooled_paired_uses_the_same_seed_draws_on_both_sides():
    """Seeds far apart (60-80 %) but b = a plus 20 examples made right in every seed: paired seed by seed and
    example by example, Δ* is never negative, although the seeds' spread alone is far wider than Δ."""
    runs_a = [_records([False] * 20 + _bernoulli(200, p, seed=s)) for s, p in ((11, 0.6), (12, 0.7), (13, 0.8))]
    runs_b = [[dict(r, correct=True) if int(r["id"][2:]) < 20 else r for r in run] for run in runs_a]
    diff = stats.pooled_paired(runs_b, runs_a, accuracy, n=1000)
    assert diff.difference == pytest.approx(20 / 220) and diff.low > 0 and diff.p_value < 0.01
    spread = stats.pooled_ci(runs_a, accuracy, n=1000)
    assert spread.high - spread.low > diff.difference


def test_runs_on_different_examples_are_refused():
    a = _records([True, False, True])
    b = [dict(r, id=f"other{i}") for i, r in enumerate(a)]
    with pytest.raises(PeftlabError, match="different examples"):
        stats.paired_bootstrap(a, b, accuracy, n=10)
    with pytest.raises(PeftlabError, match="repeat an example id"):
        stats.bootstrap_ci(a + a[:1], accuracy, n=10)


def test_record_kinds_are_resampled_separately():
    """A causal LM's records: perplexity ones (nll, tokens) and generation ones, each numbered from 0. Every
    resample keeps 30 perplexity and 10 generation records, so a score that needs both is always defined."""
    records = ([{"kind": "perplexity", "id": i, "nll": 2.0 + i % 3, "tokens": 4} for i in range(30)]
               + [{"kind": "generation", "id": i, "exact": i < 5} for i in range(10)])
    counts = []

    def score(rs):
        kinds = [r["kind"] for r in rs]
        counts.append((kinds.count("perplexity"), kinds.count("generation")))
        ppl = [r for r in rs if r["kind"] == "perplexity"]
        return {"nll_per_token": sum(r["nll"] for r in ppl) / sum(r["tokens"] for r in ppl),
                "exact_match": sum(r.get("exact", 0) for r in rs) / kinds.count("generation")}

    result = stats.bootstrap_ci(records, score, n=200)
    assert set(counts) == {(30, 10)} and result["exact_match"].point == 0.5
    assert result["exact_match"].low < 0.5 < result["exact_match"].high


def test_a_run_without_generations_pairs_with_one_that_has_them_on_perplexity():
    """A causal LM that generated (perplexity and generation records) against one that did not (perplexity only),
    on the same perplexity examples: a kind's resamples do not depend on the other kinds a run has, so the pair is
    scored on the same perplexity examples in every resample (Δ* = the per-example shift, exactly), and exact
    match, which only one side has, is not differenced."""
    def score(rs):
        ppl = [r for r in rs if r["kind"] == "perplexity"]
        gen = [r for r in rs if r["kind"] == "generation"]
        nll = sum(r["nll"] for r in ppl) / sum(r["tokens"] for r in ppl)
        return {"nll_per_token": nll} | ({"exact_match": sum(r["exact"] for r in gen) / len(gen)} if gen else {})

    ppl = [{"kind": "perplexity", "id": i, "nll": 2.0 + i % 5, "tokens": 2} for i in range(40)]
    generated = ppl + [{"kind": "generation", "id": i, "exact": i % 4 == 0} for i in range(12)]
    shifted = [dict(r, nll=r["nll"] + 0.2) for r in ppl]  # every example's NLL per token 0.1 higher
    a, b = stats.replicate(generated, score, 300, seed=4), stats.replicate(shifted, score, 300, seed=4)
    np.testing.assert_allclose(b.draws["nll_per_token"] - a.draws["nll_per_token"], 0.1)
    diff = stats.pooled_difference([b], [a])
    assert set(diff) == {"nll_per_token"} and diff["nll_per_token"].difference == pytest.approx(0.1)
    other = stats.replicate([dict(r, id=r["id"] + 100) for r in shifted], score, 300, seed=4)
    with pytest.raises(PeftlabError, match="different examples"):
        stats.pooled_difference([other], [a])


def test_a_metric_only_some_seeds_scored_pools_over_those():
    """Seed 0 generated, seeds 1 and 2 did not: perplexity pools over the three, exact match is seed 0's alone
    (its interval is seed 0's bootstrap over prompts), and a paired difference of exact match uses seed 0 only."""
    def score(rs):
        ppl = [r for r in rs if r["kind"] == "perplexity"]
        gen = [r for r in rs if r["kind"] == "generation"]
        nll = sum(r["nll"] for r in ppl) / sum(r["tokens"] for r in ppl)
        return {"nll_per_token": nll} | ({"exact_match": sum(r["exact"] for r in gen) / len(gen)} if gen else {})

    def run(shift, generate, exact_every=4):
        records = [{"kind": "perplexity", "id": i, "nll": 2.0 + i % 5 + shift, "tokens": 2} for i in range(40)]
        records += [{"kind": "generation", "id": i, "exact": i % exact_every == 0} for i in range(12)] if generate else []
        return stats.replicate(records, score, 300, seed=4)

    a = [run(0.0, True), run(0.2, False), run(0.4, False)]
    pooled = stats.pooled_interval(a)
    assert pooled["nll_per_token"].point == pytest.approx(np.mean([r.point["nll_per_token"] for r in a]))
    alone = stats.pooled_interval(a[:1])["exact_match"]
    assert pooled["exact_match"] == alone and alone.point == pytest.approx(3 / 12)
    b = [run(0.0, True, exact_every=2), run(0.2, False), run(0.4, False)]
    diff = stats.pooled_difference(b, a)
    assert diff["exact_match"].difference == pytest.approx(3 / 12) and diff["nll_per_token"].difference == 0


def test_additive_scores_resample_like_any_score():
    """Accuracy and Pearson as sums of per-example statistics: the vectorised resampling gives the same draws as
    calling the score once per resample."""
    rng = np.random.default_rng(12)
    gold = rng.random(150)
    records = [{"id": i, "gold": g, "prediction": g + rng.normal(0, 0.3), "correct": bool(rng.random() < 0.7)}
               for i, g in enumerate(gold)]

    def per_example(rs):
        x, y = np.array([r["prediction"] for r in rs]), np.array([r["gold"] for r in rs])
        return {"n": np.ones(len(rs)), "correct": np.array([r["correct"] for r in rs], float), "x": x, "y": y,
                "xx": x * x, "yy": y * y, "xy": x * y}

    def finish(s):
        cov = s["xy"] - s["x"] * s["y"] / s["n"]
        return {"accuracy": s["correct"] / s["n"],
                "pearson": cov / np.sqrt((s["xx"] - s["x"] ** 2 / s["n"]) * (s["yy"] - s["y"] ** 2 / s["n"]))}

    additive = stats.Additive(per_example, finish)
    fast = stats.replicate(records, additive, n_boot=100, seed=3)
    slow = stats.replicate(records, lambda rs: additive(rs), n_boot=100, seed=3)
    assert fast.point == slow.point
    assert fast.point["pearson"] == pytest.approx(np.corrcoef([r["prediction"] for r in records], gold)[0, 1])
    for key in ("accuracy", "pearson"):
        np.testing.assert_allclose(fast.draws[key], slow.draws[key], rtol=1e-9)

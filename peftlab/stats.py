"""Uncertainty of scores computed from per-example prediction records: bootstrap intervals and paired tests.

Every function takes prediction records (dicts with an `id`, one per evaluation example, as in a run's
predictions.jsonl) and a score function `score_fn(records) -> float | dict[str, float]` (a task's
`score_predictions`). The statistic is whatever the task computes from records — accuracy, F1 from pooled
counts, Pearson, perplexity — so nothing here assumes a metric is a mean of per-example values.

Why the percentile bootstrap (and not normal-approximation, basic or BCa intervals): it needs no normality,
stays inside a metric's range (accuracy never above 100 %), and is invariant under monotone transformations
(perplexity's interval is exp of the NLL's). BCa corrects skew better but needs a jackknife — one more score
per example per run — and does not extend simply to resampling seeds; with hundreds of examples the
percentile interval's coverage is close to nominal for the scores here.

Why a paired bootstrap and not a permutation test: one resampling distribution of the difference gives both
the interval and the p-value, p = 2·min(P*(Δ ≤ 0), P*(Δ ≥ 0)), the smallest level at which the percentile
interval excludes 0, so "p < 0.05" and "the 95 % interval excludes 0" never disagree in a report.

Pooling seeds (hierarchical bootstrap): the pooled score is the mean over seeds of each seed's score; one
bootstrap replicate draws the examples (the same indices for every seed and every variant, so differences
stay paired) and, independently, the seeds with replacement, and averages the drawn seeds' scores on the
drawn examples. Both sources of variation — which examples were evaluated, which initialisation and data
order training got — thus widen the interval. With 3 seeds the seed level is coarse (a bootstrap of the mean
of S values underestimates its variance by (S-1)/S); that is the honest limit of 3 seeds, stated in reports.

Each run is scored once per replicate (`replicate`), with the same example indices for every run, so all
intervals and pairwise differences of a comparison come from the same draws by array arithmetic.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .errors import check

ScoreFn = Callable[[list[dict]], "float | dict[str, float]"]
_SINGLE = "score"  # the key under which a score_fn returning one float is kept


class Interval(NamedTuple):
    point: float
    low: float
    high: float


class Difference(NamedTuple):
    """a − b on the same examples: its point value, percentile interval and two-sided p-value (H0: no difference);
    `ratio`: a ÷ b (mean over seeds of each) with its percentile interval from the same draws, None where b's mean
    is 0 ("LoRA reaches 90 % of full fine-tuning" is a claim about it)."""

    difference: float
    low: float
    high: float
    p_value: float
    ratio: Interval | None = None


@dataclass(frozen=True)
class Replicates:
    """One run's scores on the full evaluation set (`point`) and on each bootstrap resample (`draws`, one array
    of n_boot values per metric). `ids` is the example order ((kind, id) keys) the resample indices refer to."""

    ids: tuple
    point: dict[str, float]
    draws: dict[str, np.ndarray]
    seed: int
    single: bool = False  # score_fn returned one float (kept under "score")


def _as_dict(score: float | dict[str, float]) -> dict[str, float]:
    return dict(score) if isinstance(score, dict) else {_SINGLE: float(score)}


def _key(record: dict) -> tuple[str, str]:
    """A record's example: its kind (causal LMs mix perplexity and generation records, each numbered from 0)
    and its id."""
    return str(record.get("kind", "")), str(record["id"])


def _sorted_by_id(records: Sequence[dict]) -> list[dict]:
    keys = [_key(r) for r in records]
    check(len(set(keys)) == len(keys), "prediction records repeat an example id; each example must appear once")
    return sorted(records, key=_key)


def resample_indices(strata: Sequence[str], n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) example indices drawn with replacement, each within its own stratum (record kind) so that a
    resample keeps how many records of each kind there are. Depends only on its arguments: every run of a
    comparison scored with the same examples and seed sees the same resamples. Each stratum draws from a stream of
    its own (seeded by its name), so a kind's resamples do not depend on which other kinds a run has: a causal LM
    that generated and one that did not are still paired on their perplexity records."""
    labels = np.asarray(strata)
    indices = np.empty((n_boot, len(labels)), dtype=np.int64)
    for stratum in sorted(set(strata)):
        rng = np.random.default_rng([seed, zlib.crc32(stratum.encode())])
        positions = np.flatnonzero(labels == stratum)
        indices[:, positions] = positions[rng.integers(0, len(positions), size=(n_boot, len(positions)))]
    return indices


class Additive:
    """A score computed from sums of per-example statistics (counts, NLL and tokens, x·y products): accuracy,
    F1 from pooled counts, Pearson, perplexity. Calling it scores records like any score_fn; `replicate` sums the
    per-example arrays over all resamples at once instead of calling it once per resample — a score_fn built on
    evaluate.Metric.compute costs tens of milliseconds per call, minutes per run for 1000 resamples.

    per_example(records) -> {name: array with one row per record}; finish({name: sums}) -> {metric: value},
    where sums may carry a leading replicate axis (so finish must be written with numpy, elementwise)."""

    def __init__(self, per_example: Callable[[list[dict]], dict[str, np.ndarray]],
                 finish: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]):
        self.per_example, self.finish = per_example, finish

    def __call__(self, records: list[dict]) -> dict[str, float]:
        sums = {k: np.asarray(v).sum(axis=0) for k, v in self.per_example(records).items()}
        return {k: float(v) for k, v in self.finish(sums).items()}

    def resampled(self, records: list[dict], indices: np.ndarray) -> dict[str, np.ndarray]:
        sums = {k: np.asarray(v)[indices].sum(axis=1) for k, v in self.per_example(records).items()}
        return {k: np.asarray(v, dtype=float) for k, v in self.finish(sums).items()}


def replicate(records: Sequence[dict], score_fn: ScoreFn, n_boot: int = 1000, seed: int = 0) -> Replicates:
    """Score a run on its full set and on n_boot resamples of its examples (ordered by id)."""
    ordered = _sorted_by_id(records)
    check(len(ordered) > 0, "no prediction records to score")
    score = score_fn(ordered)
    point = _as_dict(score)
    indices = resample_indices([_key(r)[0] for r in ordered], n_boot, seed)
    if isinstance(score_fn, Additive):
        draws = score_fn.resampled(ordered, indices)
    else:  # any other score: once per resample
        draws = {k: np.empty(n_boot) for k in point}
        for b, rows in enumerate(indices):
            for key, value in _as_dict(score_fn([ordered[i] for i in rows])).items():
                draws[key][b] = value
    return Replicates(tuple(map(_key, ordered)), point, draws, seed, not isinstance(score, dict))


def _of_kind(run: Replicates, kind: str) -> list:
    return [i for i in run.ids if i[0] == kind]


def _check_same_examples(runs: Sequence[Replicates]) -> None:
    """Runs pooled or paired hold the same examples of every record kind they have (a causal LM's run that did not
    generate has no generation records: its perplexity still pools and pairs with those that did, and a metric is
    pooled over the runs that scored it), and share at least one kind."""
    check(len(runs) > 0, "no runs to pool")
    first = runs[0]
    kinds = [{kind for kind, _ in run.ids} for run in runs]
    check(bool(set.intersection(*kinds)), "the runs share no kind of prediction record; there is nothing to pool")
    for kind in set.union(*kinds):
        having = [_of_kind(run, kind) for run, own in zip(runs, kinds) if kind in own]
        check(all(ids == having[0] for ids in having),
              "runs were scored on different examples; pool and pair only runs evaluated on the "
              "same examples (the protocol fixes the evaluation subset across seeds)")
    for run in runs[1:]:
        check(run.seed == first.seed and len(next(iter(run.draws.values()))) == len(next(iter(first.draws.values()))),
              "runs were resampled with different bootstrap settings; use one n_boot and seed for a comparison")


def _seed_draws(n_seeds: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_seeds) seed positions drawn with replacement: a stream of its own (not the examples')."""
    if n_seeds == 1:
        return np.zeros((n_boot, 1), dtype=int)
    return np.random.default_rng([seed, 1]).integers(0, n_seeds, size=(n_boot, n_seeds))


def _pooled_draws(runs: Sequence[Replicates], key: str, picks: np.ndarray) -> np.ndarray:
    """Per replicate b: the mean over the drawn seeds picks[b] of those seeds' scores on resample b."""
    by_seed = np.stack([run.draws[key] for run in runs])  # (n_seeds, n_boot)
    return by_seed[picks, np.arange(picks.shape[0])[:, None]].mean(axis=1)


def _percentiles(draws: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(draws, [tail, 100 - tail])  # nan: a resample where the metric is undefined
    return float(low), float(high)


def pooled_interval(runs: Sequence[Replicates], level: float = 0.95) -> dict[str, Interval]:
    """Mean over runs (seeds) of each metric, with a hierarchical bootstrap interval (module docstring); a metric
    only some runs scored is pooled over those."""
    _check_same_examples(runs)
    result = {}
    for key in dict.fromkeys(k for run in runs for k in run.point):
        having = [run for run in runs if key in run.point]
        picks = _seed_draws(len(having), len(having[0].draws[key]), having[0].seed)
        result[key] = Interval(float(np.mean([run.point[key] for run in having])),
                               *_percentiles(_pooled_draws(having, key, picks), level))
    return result


def pooled_difference(runs_a: Sequence[Replicates], runs_b: Sequence[Replicates],
                      level: float = 0.95) -> dict[str, Difference]:
    """Paired a − b per metric, pooled over seeds: runs_a[i] and runs_b[i] share seed i; every replicate draws the
    same examples and the same seeds for both sides. A metric is differenced on the seeds where both sides scored
    it, and not at all where they never both did."""
    check(len(runs_a) == len(runs_b), "pair runs seed by seed: give both sides the same seeds")
    _check_same_examples([*runs_a, *runs_b])
    result = {}
    for key in sorted({k for a, b in zip(runs_a, runs_b) for k in a.point.keys() & b.point.keys()}):
        pairs = [(a, b) for a, b in zip(runs_a, runs_b) if key in a.point and key in b.point]
        side_a, side_b = [a for a, _ in pairs], [b for _, b in pairs]
        picks = _seed_draws(len(pairs), len(side_a[0].draws[key]), side_a[0].seed)
        point = float(np.mean([a.point[key] - b.point[key] for a, b in pairs]))
        draws_a, draws_b = _pooled_draws(side_a, key, picks), _pooled_draws(side_b, key, picks)
        draws = draws_a - draws_b
        draws = draws[~np.isnan(draws)]
        # +1 on both counts: the observed data count as one replicate, so p is never exactly 0 from finite draws
        below, above = (np.sum(draws <= 0) + 1) / (len(draws) + 1), (np.sum(draws >= 0) + 1) / (len(draws) + 1)
        result[key] = Difference(point, *_percentiles(draws, level), float(min(1.0, 2 * min(below, above))),
                                 _ratio(side_a, side_b, key, draws_a, draws_b, level))
    return result


def _ratio(side_a: Sequence[Replicates], side_b: Sequence[Replicates], key: str, draws_a: np.ndarray,
           draws_b: np.ndarray, level: float) -> Interval | None:
    mean_a, mean_b = (float(np.mean([run.point[key] for run in side])) for side in (side_a, side_b))
    if mean_b == 0:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = draws_a / draws_b
    return Interval(mean_a / mean_b, *_percentiles(ratios[np.isfinite(ratios)], level))


def _unwrap(result: dict, run: Replicates) -> object:
    return result[_SINGLE] if run.single else result


def bootstrap_ci(records: Sequence[dict], score_fn: ScoreFn, n: int = 1000, seed: int = 0,
                 level: float = 0.95) -> Interval | dict[str, Interval]:
    """(point, low, high) percentile-bootstrap interval over examples; a dict of them when score_fn returns a dict."""
    run = replicate(records, score_fn, n, seed)
    return _unwrap(pooled_interval([run], level), run)


def paired_bootstrap(records_a: Sequence[dict], records_b: Sequence[dict], score_fn: ScoreFn, n: int = 1000,
                     seed: int = 0, level: float = 0.95) -> Difference | dict[str, Difference]:
    """Paired bootstrap of score(a) − score(b) on the same examples (matched by id): difference, interval, p."""
    a, b = replicate(records_a, score_fn, n, seed), replicate(records_b, score_fn, n, seed)
    return _unwrap(pooled_difference([a], [b], level), a)


def pooled_ci(runs: Sequence[Sequence[dict]], score_fn: ScoreFn, n: int = 1000, seed: int = 0,
              level: float = 0.95) -> Interval | dict[str, Interval]:
    """Mean over seeds (one record list per seed) with the hierarchical bootstrap interval (module docstring)."""
    replicates = [replicate(records, score_fn, n, seed) for records in runs]
    return _unwrap(pooled_interval(replicates, level), replicates[0])


def pooled_paired(runs_a: Sequence[Sequence[dict]], runs_b: Sequence[Sequence[dict]], score_fn: ScoreFn,
                  n: int = 1000, seed: int = 0, level: float = 0.95) -> Difference | dict[str, Difference]:
    """Paired a − b pooled over seeds: runs_a[i] and runs_b[i] are the record lists of the same seed."""
    a = [replicate(records, score_fn, n, seed) for records in runs_a]
    b = [replicate(records, score_fn, n, seed) for records in runs_b]
    return _unwrap(pooled_difference(a, b, level), a[0])

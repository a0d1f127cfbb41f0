"""The figures of a comparison, from its runs' per-example records: per variant the mean over seeds of every
metric with its 95 % interval, the paired test against the baseline, and a Pareto front that only counts
differences a reader can trust.

Every run is scored from its predictions.jsonl through its task's `score_predictions` (so a report rebuilds from
records), on bootstrap resamples that are the same for every run (stats.replicate), so intervals, differences
and their p-values all come from one set of draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import rundir, stats
from .errors import check

ALPHA = 0.05  # a difference is significant when its paired two-sided p-value is below this
# "Clearly cheaper": at least 10 % less measured peak memory. The same variant's peak RSS varies by a few percent
# between runs (allocator, thread pools), so a smaller gap is not a real saving.
CLEARLY_CHEAPER = 0.9
PREDICTIONS = rundir.PREDICTIONS["reported"]


@dataclass(frozen=True)
class VariantFigures:
    intervals: dict[str, stats.Interval]  # mean over seeds and its 95 % interval, per metric
    vs_baseline: dict[str, stats.Difference]  # this variant − the baseline, paired on their shared seeds
    replicates: dict[int, stats.Replicates]  # by training seed


def read_predictions(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / PREDICTIONS
    check(path.is_file(), f"{run_dir} has no {PREDICTIONS} (recorded before per-example records): re-run the "
                          "comparison to get intervals and paired tests")
    return rundir.read_jsonl(path)


def ranking_metric(task) -> tuple[str, bool]:
    """What a comparison ranks by: the task's continuous selection metric (a causal LM's perplexity, not its exact
    match on a few prompts, whose interval spans most differences) and whether higher is better."""
    return task.BEST_METRIC, getattr(task, "GREATER_IS_BETTER", True)


def paired(a: dict[int, stats.Replicates], b: dict[int, stats.Replicates]) -> dict[str, stats.Difference] | None:
    """a − b per metric, on the same examples, pooled over the seeds both ran; None when they share no seed."""
    shared = sorted(a.keys() & b.keys())
    return stats.pooled_difference([a[s] for s in shared], [b[s] for s in shared]) if shared else None


def figures(runs: dict[str, list[dict]], baseline: str, task, n_boot: int = 1000,
            seed: int = 0) -> dict[str, VariantFigures]:
    """runs: variant name -> its finished runs' records (load_record: `dir`, `recipe`); variants without runs are
    left out. The baseline's paired test against itself is all zeros with p = 1."""
    replicates = {name: {r["recipe"]["train"]["seed"]: stats.replicate(read_predictions(r["dir"]),
                                                                        task.score_predictions, n_boot, seed)
                         for r in records}
                  for name, records in runs.items() if records}
    base = replicates.get(baseline)
    return {name: VariantFigures(stats.pooled_interval(list(reps.values())),
                                 (paired(reps, base) or {}) if base else {}, reps)
            for name, reps in replicates.items()}


def significantly_better(a: VariantFigures, b: VariantFigures, metric: str, greater_is_better: bool) -> bool:
    difference = (paired(a.replicates, b.replicates) or {}).get(metric)
    return (difference is not None and difference.p_value < ALPHA
            and (difference.difference > 0) == greater_is_better)


def significant_front(costs: dict[str, float], figs: dict[str, VariantFigures], metric: str,
                      greater_is_better: bool) -> list[str]:
    """Variants no other variant dominates, where b dominates a when b is neither significantly worse nor clearly
    more expensive, and is significantly better or clearly cheaper. Differences within noise do not count: a
    variant leaves the front only for one that is really better or really cheaper, and two variants that differ
    only within noise both stay."""
    names = [n for n in costs if n in figs]
    better = {(a, b): significantly_better(figs[a], figs[b], metric, greater_is_better)
              for a in names for b in names if a != b}

    def dominates(b: str, a: str) -> bool:
        cheaper_a, cheaper_b = costs[a] < CLEARLY_CHEAPER * costs[b], costs[b] < CLEARLY_CHEAPER * costs[a]
        return not better[a, b] and not cheaper_a and (better[b, a] or cheaper_b)

    return [a for a in names if not any(dominates(b, a) for b in names if b != a)]


def separates(figs: dict[str, VariantFigures], metric: str) -> tuple[bool, float, float]:
    """(whether the metric tells these variants apart, median 95 % interval width, spread of the means): a metric
    whose intervals are wider than the whole spread of the variants' means cannot rank them."""
    intervals = [f.intervals[metric] for f in figs.values() if metric in f.intervals]
    widths = sorted(i.high - i.low for i in intervals)
    means = [i.point for i in intervals]
    width, spread = (widths[len(widths) // 2], max(means) - min(means)) if intervals else (0.0, 0.0)
    return width <= spread, width, spread

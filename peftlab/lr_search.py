"""A learning rate per method: the grid a comparison searches for each variant and how a grid point is scored.

One borrowed learning rate for every method measures the learning rate as much as the method (peft's own
method comparison saw one method go from 0.15 % to 41.6 % once tuned), so a comparison can search a small grid
per variant on the first seed, choose on the SELECTION split (carved from train, never the reported split) and
run the remaining seeds at the chosen value.
"""

from __future__ import annotations

import math

from .errors import check

# 3 points, about ×3 apart, per method family (Method.kind). Full fine-tuning moves every weight: the usual
# 2e-5..1e-4. Low-rank updates start at zero and are small: 10× that (LoRA, DoRA, QLoRA = LoRA on a 4-bit base).
# IA3 scales activations and prefix/prompt tuning train a few virtual tokens: few parameters, far from their
# useful values at init, so 1e-2 and more. Bottleneck adapters (Houlsby, Pfeiffer) are small dense layers: between.
# LoRA's initialisations and LoRA+ stay kind "lora" and share its grid. AdaLoRA is LoRA in SVD form and OFT/BOFT
# train small rotations from the identity: LoRA's rates. VeRA trains only scaling vectors over frozen random
# matrices: about 10x LoRA's (its paper's rates are 10-100x LoRA's).
DEFAULT_GRIDS: dict[str, list[float]] = {
    "full": [2e-5, 5e-5, 1e-4],
    "lora": [2e-4, 6e-4, 2e-3],
    "dora": [2e-4, 6e-4, 2e-3],
    "ia3": [3e-3, 1e-2, 3e-2],
    "prefix": [3e-3, 1e-2, 3e-2],
    "prompt": [1e-2, 3e-2, 1e-1],
    "houlsby": [1e-4, 3e-4, 1e-3],
    "pfeiffer": [1e-4, 3e-4, 1e-3],
    "adalora": [2e-4, 6e-4, 2e-3],
    "oft": [2e-4, 6e-4, 2e-3],
    "boft": [2e-4, 6e-4, 2e-3],
    "vera": [2e-3, 6e-3, 2e-2],
}


def grid_for(lrs, recipe_file: str, method_kind: str) -> list[float] | None:
    """The learning rates to try for one recipe: Comparison.lrs is None (the recipe's own lr), "auto" (the
    method family's DEFAULT_GRIDS) or {recipe file: [lr, ...]} (recipes not named keep their own lr)."""
    if lrs is None:
        return None
    if lrs == "auto":
        check(method_kind in DEFAULT_GRIDS, f"no default learning-rate grid for method {method_kind!r}; give "
                                            f"lrs={{{recipe_file!r}: [...]}} in the comparison file")
        return list(DEFAULT_GRIDS[method_kind])
    grid = lrs.get(recipe_file)
    if grid is not None:
        check(len(grid) > 0 and all(isinstance(lr, (int, float)) and lr > 0 for lr in grid),
              f"lrs[{recipe_file!r}] = {grid!r}: give a non-empty list of positive learning rates")
    return None if grid is None else [float(lr) for lr in grid]


def check_lrs(lrs, recipe_files: list[str], where: str) -> None:
    """Comparison.lrs must be None, "auto" or a dict keyed by recipe files of the comparison."""
    check(lrs is None or lrs == "auto" or isinstance(lrs, dict),
          f"{where}: lrs={lrs!r}; give None, \"auto\" or {{recipe file: [lr, ...]}}")
    if isinstance(lrs, dict):
        unknown = sorted(set(lrs) - set(recipe_files))
        check(not unknown, f"{where}: lrs names {unknown}, not among the recipes {recipe_files}")


def selection_score(record: dict, task) -> tuple[str, float, bool]:
    """(metric, value, greater_is_better) a grid point is chosen by: the run's best evaluation on the selection
    split, i.e. its evaluation at the checkpoint it selected. Read from the run's protocol (metrics.json) and its
    evaluation log; a run recorded before the protocol existed falls back to its task's BEST_METRIC at best_step."""
    metrics, protocol = record["metrics"], record["metrics"].get("protocol") or {}
    metric = protocol.get("selection_metric", task.BEST_METRIC)
    greater = protocol.get("greater_is_better", getattr(task, "GREATER_IS_BETTER", True))
    step = protocol.get("selected_step", metrics.get("best_step"))
    evals = [e for e in record["log_history"] if f"eval_{metric}" in e]
    chosen = [e for e in evals if e["step"] == step] or evals[-1:]
    value = chosen[0][f"eval_{metric}"] if chosen else math.nan
    return metric, float(value), bool(greater)


# With lrs="auto", a rate chosen at the edge of its family's grid may be beaten by one beyond it: the grid goes on
# past that edge, a grid step at a time, at most this many points (a learning rate given as a list is searched as is).
EDGE_EXTENSIONS = 2


def beyond_edge(grid: list[float], chosen: float | None) -> float | None:
    """The next rate past the grid's edge, one step (the ratio of the two outermost rates) further, when the chosen
    rate is that edge; None when the choice lies inside the grid (or nothing was chosen)."""
    ordered = sorted(grid)
    if chosen is None or len(ordered) < 2 or chosen not in (ordered[0], ordered[-1]):
        return None
    step = ordered[-1] / ordered[-2] if chosen == ordered[-1] else ordered[0] / ordered[1]
    return float(f"{chosen * step:.3g}")


def choose(scores: dict[float, float], greater_is_better: bool) -> float | None:
    """The learning rate with the best selection score (NaN — a failed or diverged point — never wins; ties go to
    the smaller rate); None when no grid point has a score."""
    valid = {lr: s for lr, s in scores.items() if not math.isnan(s)}
    if not valid:
        return None
    sign = 1 if greater_is_better else -1
    return max(sorted(valid), key=lambda lr: sign * valid[lr])

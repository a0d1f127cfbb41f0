"""Learning-rate grids per method and the choice of a grid point on the selection split."""

from __future__ import annotations

import math

import pytest

from peftlab import lr_search
from peftlab.errors import PeftlabError
from peftlab.tasks import get_task


def test_grid_for():
    assert lr_search.grid_for(None, "lora.py", "lora") is None
    assert lr_search.grid_for("auto", "full.py", "full") == [2e-5, 5e-5, 1e-4]
    assert lr_search.grid_for({"lora.py": [1e-3, 3e-3]}, "lora.py", "lora") == [1e-3, 3e-3]
    assert lr_search.grid_for({"lora.py": [1e-3]}, "full.py", "full") is None  # not named: its own lr
    with pytest.raises(PeftlabError, match="positive learning rates"):
        lr_search.grid_for({"lora.py": [0]}, "lora.py", "lora")
    with pytest.raises(PeftlabError, match="not among the recipes"):
        lr_search.check_lrs({"lroa.py": [1e-3]}, ["lora.py"], "cmp.py")


def test_every_method_has_a_default_grid():
    from peftlab.methods import METHODS

    assert set(METHODS) == set(lr_search.DEFAULT_GRIDS)


def test_choose_by_direction_and_never_a_failed_point():
    assert lr_search.choose({1e-4: 0.80, 3e-4: 0.85, 1e-3: math.nan}, greater_is_better=True) == 3e-4
    assert lr_search.choose({1e-4: 3.1, 3e-4: 2.9, 1e-3: 3.5}, greater_is_better=False) == 3e-4
    assert lr_search.choose({1e-4: 0.8, 3e-4: 0.8}, greater_is_better=True) == 1e-4  # a tie: the smaller rate
    assert lr_search.choose({1e-4: math.nan}, True) is None


def _record(protocol: dict | None) -> dict:
    log = [{"step": 4, "eval_accuracy": 0.70, "eval_loss": 1.0}, {"step": 8, "eval_accuracy": 0.75, "eval_loss": 0.9},
           {"step": 8, "loss": 0.5}, {"step": 12, "eval_accuracy": 0.72, "eval_loss": 0.95}]
    return {"metrics": {"best_step": 12, "task_metrics": {"accuracy": 0.99}} | ({"protocol": protocol} if protocol
                                                                             else {}), "log_history": log}


def test_selection_score_is_the_selected_checkpoints_evaluation():
    task = get_task("classification")
    # the protocol names the selection metric and the step it selected; the reported score (0.99) plays no part
    protocol = {"selection_metric": "accuracy", "greater_is_better": True, "selected_step": 8}
    assert lr_search.selection_score(_record(protocol), task) == ("accuracy", 0.75, True)
    # a run recorded before the protocol: the task's BEST_METRIC at best_step
    assert lr_search.selection_score(_record(None), task) == ("accuracy", 0.72, True)


def test_beyond_edge_steps_past_a_chosen_edge_only():
    assert lr_search.beyond_edge([2e-5, 5e-5, 1e-4], 1e-4) == 2e-4  # top edge: one step (x2) up
    assert lr_search.beyond_edge([2e-4, 6e-4, 2e-3], 2e-4) == pytest.approx(6.67e-5)  # bottom edge: one step down
    assert lr_search.beyond_edge([2e-4, 6e-4, 2e-3], 6e-4) is None  # inside the grid
    assert lr_search.beyond_edge([2e-4, 6e-4, 2e-3], None) is None and lr_search.beyond_edge([1e-3], 1e-3) is None


@pytest.mark.parametrize("selection, extend, searched, chosen", [
    # steps of 1e-3 / 3e-4: 3.33e-3, then 0.0111
    ({1e-4: 0.5, 3e-4: 0.6, 1e-3: 0.7, 3.33e-3: 0.8, 0.0111: 0.75}, 2, [1e-4, 3e-4, 1e-3, 3.33e-3, 0.0111], 3.33e-3),
    ({1e-4: 0.5, 3e-4: 0.6, 1e-3: 0.7, 3.33e-3: 0.8, 0.0111: 0.9}, 2, [1e-4, 3e-4, 1e-3, 3.33e-3, 0.0111], 0.0111),
    ({1e-4: 0.5, 3e-4: 0.6, 1e-3: 0.7}, 0, [1e-4, 3e-4, 1e-3], 1e-3),  # a list given as is: no extension
    ({1e-4: 0.5, 3e-4: 0.8, 1e-3: 0.7}, 2, [1e-4, 3e-4, 1e-3], 3e-4),  # chosen inside: nothing more to run
])
def test_search_goes_past_the_edge_while_the_edge_wins(monkeypatch, selection, extend, searched, chosen):
    """The comparison's search with fake runs: each grid point "scores" its selection value; at most `extend` points
    past the edge run, each only while the edge rate is the best so far."""
    from pathlib import Path

    from peftlab import comparison, run_report
    from peftlab.comparison import Variant

    monkeypatch.setattr(run_report, "load_record",
                        lambda run: {"lr": float(run.name), "recipe": {"model": {"task": "classification"}}})
    monkeypatch.setattr(lr_search, "selection_score", lambda record, task: ("accuracy", selection[record["lr"]], True))
    ran = []

    def run(variant):
        ran.append(variant.lr)
        return {"state": "finished", "run": str(Path("/runs") / repr(variant.lr))}

    search = comparison.search_lr(Variant(Path("lora.py"), "lora", 0), [1e-4, 3e-4, 1e-3], run, extend)
    assert ran == pytest.approx(searched) and search["chosen"] == pytest.approx(chosen)
    assert search["grid"] == pytest.approx(sorted(searched))

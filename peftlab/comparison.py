"""Comparisons: several recipes (methods) on the same task, each variant (× seed) run as its own
`python -m peftlab.run` subprocess, so that peak memory is measured cleanly per variant and a crash stops only that
variant (python -m peftlab.compare is the command; peftlab/comparison_report.py renders the report).

A variant with no overrides at its recipe's own seed is exactly the recipe's run, so its report also goes to
reports/<recipe>.md (no second run needed for the recipe's own report).
"""

from __future__ import annotations

import runpy
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import run_report, rundir
from .errors import PeftlabError, check
from .recipe import load_recipe


@dataclass(frozen=True)
class Comparison:
    name: str
    recipes: list[str]  # recipe files, relative to the comparison file; all must share model and data
    baseline: str = "full_sst2"  # the recipe name every row is compared with (full fine-tuning)
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: list[str] = field(default_factory=list)  # `--set` items applied to every variant


@dataclass(frozen=True)
class Variant:
    recipe: Path
    name: str
    seed: int
    is_recipe_run: bool = False  # no overrides, the recipe's own seed: the very run `peftlab.run RECIPE` makes

    @property
    def label(self) -> str:
        return f"{self.name}-seed{self.seed}"


def load_comparison(path: Path) -> tuple[Comparison, list[Variant]]:
    """Load and validate every variant before anything runs; all must train the same model on the same data."""
    check(path.is_file(), f"comparison file {path} not found: pass a recipes/compare_*.py file")
    try:
        comparison = runpy.run_path(str(path)).get("comparison")
    except Exception as err:  # user code: one line, with where it failed
        raise PeftlabError(f"{path}: {type(err).__name__}: {err}") from None
    check(isinstance(comparison, Comparison), f"{path}: define a top-level `comparison = Comparison(...)`")
    check(bool(comparison.recipes) and bool(comparison.seeds), f"{path}: name at least one recipe and one seed")
    variants, first = [], None
    for name in comparison.recipes:
        recipe_path = path.parent / name
        recipe = load_recipe(recipe_path, comparison.overrides)
        first = first or recipe
        check(recipe.model.name == first.model.name and recipe.data == first.data,
              f"{recipe_path}: model or data differ from {comparison.recipes[0]}; a comparison needs the same task")
        variants += [Variant(recipe_path, recipe.name, seed, not comparison.overrides and seed == recipe.train.seed)
                     for seed in comparison.seeds]
    names = [v.name for v in variants]
    check(comparison.baseline in names, f"{path}: baseline {comparison.baseline!r} is not among the recipes {sorted(set(names))}")
    return comparison, variants


def _last_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line.split(":")[0]]
    return (errors or lines or ["no output"])[-1][:300]


def run_variant(variant: Variant, comparison: Comparison, out_root: Path, reports_dir: Path) -> dict:
    runs_dir = out_root / variant.label
    # a report is named after its recipe: with several seeds each seed's goes to its own folder, none overwritten
    own_reports = reports_dir / f"seed{variant.seed}" if len(comparison.seeds) > 1 else reports_dir
    command = [sys.executable, "-m", "peftlab.run", str(variant.recipe), "--runs-dir", str(runs_dir),
               "--reports-dir", str(own_reports)]
    if not variant.is_recipe_run:
        command += ["--set", f"train.seed={variant.seed}"]
    for item in comparison.overrides:
        command += ["--set", item]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    run_dirs = sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []
    run = run_dirs[-1] if run_dirs else None
    status = rundir.read_status(run) if run is not None else {"state": "failed", "error": None}
    finished = proc.returncode == 0 and status["state"] == rundir.FINISHED
    (out_root / f"{variant.label}.log").write_text(proc.stdout + proc.stderr)
    error = None if finished else status.get("error") or _last_error_line(proc.stderr)  # the run's own record first
    if finished and variant.is_recipe_run:  # the recipe's own report too, rather than running it a second time
        run_report.write(run, reports_dir.parent)
    return {"name": variant.name, "seed": variant.seed, "recipe": str(variant.recipe),
            "run": str(run) if run else None, "state": "finished" if finished else "failed",
            "error": error, "seconds": time.perf_counter() - started}


def run_all(args, argv: list[str], console) -> dict:
    comparison, variants = load_comparison(args.comparison)
    out_root = rundir.create(args.runs_dir, comparison.name)
    record = {"name": comparison.name, "baseline": comparison.baseline, "seeds": comparison.seeds,
              "overrides": comparison.overrides, "dir": str(out_root), "variants": [],
              "command": shlex.join(["python", "-m", "peftlab.compare", *argv])}
    started = time.perf_counter()
    reports_dir = args.reports_dir / comparison.name
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("comparison", total=len(variants))
        for variant in variants:
            progress.update(task, description=f"{comparison.name}: {variant.label}")
            result = run_variant(variant, comparison, out_root, reports_dir)
            record["variants"].append(result)
            state = "[green]done" if result["state"] == "finished" else f"[red]failed: {result['error']}"
            progress.console.print(f"{variant.label}: {state} ({result['seconds']:.0f} s)", highlight=False)
            progress.advance(task)
    record["wall_seconds"] = time.perf_counter() - started
    rundir.write_json(out_root / "comparison.json", record)
    rundir.set_status(out_root, rundir.FINISHED)
    return record

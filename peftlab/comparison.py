"""Comparisons: several recipes (methods) on the same task, each variant (× seed) run as its own
`python -m peftlab.run` subprocess, so that peak memory is measured cleanly per variant and a crash stops only that
variant (python -m peftlab.compare is the command; peftlab/comparison_report.py renders the report).

With `lrs`, each variant first runs a small learning-rate grid on the first seed, keeps the rate with the best
selection-split score (lr_search) and runs its other seeds at that rate. Every variant's first seed runs first,
then the other seeds one at a time across the variants, so that a comparison stopped part-way pairs its variants.

A variant with no overrides at its recipe's own seed is exactly the recipe's run, so its report also goes to
reports/<recipe>.md (no second run needed for the recipe's own report).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import runpy
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import comparison_records, lr_search, resume, run_report, rundir
from .errors import PeftlabError, check
from .recipe import load_recipe
from .tasks import get_task


@dataclass(frozen=True)
class Comparison:
    name: str
    recipes: list[str]  # recipe files, relative to the comparison file; all must share model and data
    baseline: str = "full_sst2"  # the recipe name every row is compared with (full fine-tuning)
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: list[str] = field(default_factory=list)  # `--set` items applied to every variant
    # learning rates searched per variant on the first seed (chosen on the selection split, see lr_search):
    # {recipe file: [lr, ...]}, "auto" (a grid per method family) or None (each recipe's own lr)
    lrs: dict[str, list[float]] | str | None = None
    bootstrap: int = 1000  # resamples behind the report's intervals and paired tests
    # more paired tests beside those against the baseline: {variant: the variant it is tested against}, e.g. an
    # initialisation against the plain method it starts ({"loftq_sst2": "qlora_sst2"})
    pairs: dict[str, str] = field(default_factory=dict)
    # the recipe files whose runs generate (a causal LM's exact match on its generation prompts, minutes a run on a
    # CPU); the others run with data.generate_split=None. None: each variant as its recipe says
    generate: list[str] | None = None
    # the seeds whose runs generate (None: every seed): exact match on a few hundred prompts costs more than training
    # on a CPU; its interval then covers the prompts of those seeds only, and the report says so
    generate_seeds: list[int] | None = None


@dataclass(frozen=True)
class Variant:
    recipe: Path
    name: str
    seed: int
    is_recipe_run: bool = False  # no overrides, the recipe's own seed: the very run `peftlab.run RECIPE` makes
    lr: float | None = None  # a learning-rate grid point or the chosen rate; None: the recipe's own
    generates: bool = False  # a causal LM that generates from its prompts (exact match)
    skips_generation: bool = False  # its recipe generates, the comparison leaves that out (Comparison.generate)
    # a grid point of a variant that generates, run without generating: the rate is chosen on the selection split,
    # which generation does not score, so the search skips it and the chosen rate runs again on the first seed
    search: bool = False

    @property
    def label(self) -> str:
        return (f"{self.name}-seed{self.seed}" + ("" if self.lr is None else f"-lr{self.lr:g}")
                + ("-search" if self.search else ""))

    @property
    def overrides(self) -> list[str]:
        """This variant's own `--set` items, after the comparison's."""
        return (([] if self.lr is None else [f"train.lr={self.lr!r}"])
                + ([NO_GENERATION] if self.search or self.skips_generation else []))


NO_GENERATION = "data.generate_split=None"


def load_comparison(path: Path, seeds: list[int] | None = None, recipe_lrs: bool = False,
                    overrides: list[str] = ()) -> tuple[Comparison, list[Variant]]:
    """Load and validate every variant before anything runs; all must train the same model on the same data.
    `seeds`, `recipe_lrs` (each recipe's own learning rate, no grid) and `overrides` (more `--set` items) change the
    file's comparison, e.g. for a cheaper run; the report's command shows them."""
    check(path.is_file(), f"comparison file {path} not found: pass a recipes/compare_*.py file")
    try:
        comparison = runpy.run_path(str(path)).get("comparison")
    except Exception as err:  # user code: one line, with where it failed
        raise PeftlabError(f"{path}: {type(err).__name__}: {err}") from None
    check(isinstance(comparison, Comparison), f"{path}: define a top-level `comparison = Comparison(...)`")
    comparison = replace(comparison, seeds=seeds or comparison.seeds, lrs=None if recipe_lrs else comparison.lrs,
                         overrides=[*comparison.overrides, *overrides])
    check(bool(comparison.recipes) and bool(comparison.seeds), f"{path}: name at least one recipe and one seed")
    variants, first = [], None
    for name in comparison.recipes:
        recipe_path = path.parent / name
        recipe = load_recipe(recipe_path, comparison.overrides)
        first = first or recipe
        check(recipe.model.name == first.model.name and recipe.data == first.data,
              f"{recipe_path}: model or data differ from {comparison.recipes[0]}; a comparison needs the same task")
        prompts = recipe.model.task == "causal_lm" and recipe.data.generate_split is not None
        chosen = prompts and (comparison.generate is None or name in comparison.generate)
        for seed in comparison.seeds:
            generates = chosen and (comparison.generate_seeds is None or seed in comparison.generate_seeds)
            variants.append(Variant(recipe_path, recipe.name, seed, generates == prompts and not comparison.overrides
                                    and seed == recipe.train.seed, generates=generates,
                                    skips_generation=prompts and not generates))
    names = [v.name for v in variants]
    check(comparison.baseline in names, f"{path}: baseline {comparison.baseline!r} is not among the recipes {sorted(set(names))}")
    unknown = sorted({n for pair in comparison.pairs.items() for n in pair} - set(names))
    check(not unknown, f"{path}: pairs name {unknown}, not among the recipes {sorted(set(names))}")
    unknown = sorted(set(comparison.generate or []) - set(comparison.recipes))
    check(not unknown, f"{path}: generate names {unknown}, not among the recipe files {comparison.recipes}")
    unknown = sorted(set(comparison.generate_seeds or []) - set(comparison.seeds))
    check(not unknown, f"{path}: generate_seeds {unknown} are not among the seeds {comparison.seeds}")
    lr_grids(comparison, path)  # a bad grid is an error before anything runs
    return comparison, variants


def lr_grids(comparison: Comparison, path: Path) -> dict[str, list[float]]:
    """Recipe name -> the learning rates to search, for the recipes that have a grid."""
    lr_search.check_lrs(comparison.lrs, comparison.recipes, str(path))
    grids = {}
    for file in comparison.recipes:
        recipe = load_recipe(path.parent / file, comparison.overrides)
        grid = lr_search.grid_for(comparison.lrs, file, recipe.method.kind)
        if grid:
            check(not any(item.startswith("train.lr=") for item in comparison.overrides),
                  f"{path}: overrides set train.lr while lrs searches it; keep one")
            grids[recipe.name] = grid
    return grids


def search_lr(first: Variant, grid: list[float], run: Callable[[Variant], dict], extend: int = 0) -> dict:
    """Run every grid point on the first seed; choose on the selection split (lr_search.selection_score). With
    `extend`, a choice at the grid's edge runs the next point beyond it, up to `extend` more points."""
    scores, metric, greater = {}, None, True
    grid, todo = list(grid), list(grid)
    while todo:
        lr = todo.pop(0)
        result = run(replace(first, lr=lr, is_recipe_run=False, search=first.generates))
        if result["state"] == "finished":
            record = run_report.load_record(Path(result["run"]))
            metric, scores[lr], greater = lr_search.selection_score(record, get_task(record["recipe"]["model"]["task"]))
        beyond = lr_search.beyond_edge(grid, lr_search.choose(scores, greater)) if not todo and extend else None
        if beyond is not None:
            grid, todo, extend = [*grid, beyond], [beyond], extend - 1
    return {"grid": sorted(grid), "chosen": lr_search.choose(scores, greater), "metric": metric,
            "greater_is_better": greater}


def _last_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line.split(":")[0]]
    return (errors or lines or ["no output"])[-1][:300]


UNFIT = re.compile(r"does not fit.*\(plan: ([^)]*)\)")  # levers.fit_budget's error line


def run_variant(variant: Variant, comparison: Comparison, out_root: Path, reports_dir: Path,
                budget: int | None = None, base_cache: Path | None = None) -> dict:
    runs_dir = out_root / variant.label
    # a report is named after its recipe: with several seeds each seed's goes to its own folder, none overwritten
    own_reports = reports_dir / f"seed{variant.seed}" if len(comparison.seeds) > 1 else reports_dir
    own_reports = own_reports if variant.lr is None else own_reports / f"lr{variant.lr:g}"  # one per grid point
    command = [sys.executable, "-m", "peftlab.run", str(variant.recipe), "--runs-dir", str(runs_dir),
               "--reports-dir", str(own_reports)]
    if base_cache is not None:
        command += ["--base-cache", str(base_cache)]
    if not variant.is_recipe_run:
        command += ["--set", f"train.seed={variant.seed}"]
    for item in comparison.overrides + variant.overrides:
        command += ["--set", item]
    if budget is not None:
        command += ["--budget", str(budget)]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    run_dirs = sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []
    run = run_dirs[-1] if run_dirs else None
    status = rundir.read_status(run) if run is not None else {"state": "failed", "error": None}
    finished = proc.returncode == 0 and status["state"] == rundir.FINISHED
    (out_root / f"{variant.label}.log").write_text(proc.stdout + proc.stderr)
    error = None if finished else status.get("error") or _last_error_line(proc.stderr)  # the run's own record first
    unfit = None if finished else UNFIT.search(error or "")
    if unfit:  # stopped before training: a result of the comparison, not a crash
        error = f"does not fit (plan: {unfit.group(1)})"
    if finished and variant.is_recipe_run:  # the recipe's own report too, rather than running it a second time
        run_report.write(run, reports_dir.parent)
    return {"name": variant.name, "seed": variant.seed, "lr": variant.lr, "recipe": str(variant.recipe),
            "search": variant.search, "run": str(run) if run else None,
            "state": "finished" if finished else "does not fit" if unfit else "failed",
            "error": error, "seconds": time.perf_counter() - started}


def run_all(args, argv: list[str], console) -> dict:
    comparison, variants = load_comparison(args.comparison, args.seeds, args.recipe_lrs, args.overrides)
    grids = lr_grids(comparison, args.comparison)
    record = {"name": comparison.name, "baseline": comparison.baseline, "seeds": comparison.seeds,
              "overrides": comparison.overrides, "budget": getattr(args, "budget", None),
              "bootstrap": comparison.bootstrap, "pairs": comparison.pairs, "generate": comparison.generate,
              "generate_seeds": comparison.generate_seeds, "variants": [], "lr_search": {},
              "command": shlex.join(["python", "-m", "peftlab.compare", *argv])}
    resume_from = getattr(args, "resume", None)
    out_root, recorded, earlier_seconds = (resumed(resume_from, record, args.runs_dir) if resume_from else
                                           (rundir.create(args.runs_dir, comparison.name), {}, 0.0))
    record["dir"] = str(out_root)
    started = time.perf_counter()
    reports_dir = args.reports_dir / comparison.name

    def save() -> None:  # after every run: --resume continues from either
        rundir.write_json(out_root / "comparison.json", record)
        comparison_records.keep(record, reports_dir / "records")
    # where a task scores the base model before training, the variants sharing a base score it once (--base-cache)
    scores_base = {path: hasattr(get_task(load_recipe(path, comparison.overrides).model.task), "Evaluation")
                   for path in dict.fromkeys(v.recipe for v in variants)}
    continue_with = resume.command_line(argv, resume_from and str(resume_from), out_root, "peftlab.compare")
    with interrupted_at(out_root, continue_with), \
            Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     console=console) as progress:
        task = progress.add_task("comparison", total=len(variants) + sum(len(g) - 1 for g in grids.values()))

        def run(variant: Variant) -> dict:
            progress.update(task, description=f"{comparison.name}: {variant.label}")
            result = recorded.get(variant.label) or run_variant(
                variant, comparison, out_root, reports_dir, getattr(args, "budget", None),
                out_root / "base" if scores_base[variant.recipe] else None)
            record["variants"].append(result)
            record["wall_seconds"] = earlier_seconds + time.perf_counter() - started
            save()
            state = "[green]done" if result["state"] == "finished" else \
                f"[yellow]{result['error']}" if result["state"] == "does not fit" else f"[red]failed: {result['error']}"
            progress.console.print(f"{variant.label}: {state} ({result['seconds']:.0f} s)", highlight=False)
            bar = progress.tasks[task]  # an lr grid extended past its edge runs more than the total counted at start
            progress.update(task, total=max(bar.total, bar.completed + 1), advance=1)
            return result

        later_seeds = []  # per recipe, the runs after its first seed's
        for name in dict.fromkeys(v.name for v in variants):
            first, *rest = [v for v in variants if v.name == name]
            if name in grids:  # the first seed's run at the chosen rate is one of the grid's
                extend = lr_search.EDGE_EXTENSIONS if comparison.lrs == "auto" else 0  # a list given is kept
                search = record["lr_search"][name] = search_lr(first, grids[name], run, extend)
                # the first seed runs again at the chosen rate where its grid runs left generation out
                if first.generates and search["chosen"] is not None:
                    run(replace(first, lr=search["chosen"], is_recipe_run=False))
                rest = [replace(v, lr=search["chosen"], is_recipe_run=False) for v in rest] \
                    if search["chosen"] is not None else []
            else:
                run(first)
            later_seeds.append(rest)
        # seed by seed across the recipes: a comparison stopped part-way (they can take several sittings) holds
        # every recipe's runs for the seeds it reached, so its partial report still pairs them
        for same_seed in itertools.zip_longest(*later_seeds):
            for variant in filter(None, same_seed):
                run(variant)
    record["wall_seconds"] = earlier_seconds + time.perf_counter() - started
    save()
    rundir.set_status(out_root, rundir.FINISHED)
    return record


@contextlib.contextmanager
def interrupted_at(out_root: Path, resume_command: str):
    """Ctrl-C: every finished run is recorded already (after each one), so the comparison is marked interrupted
    and the command that continues it is the interruption's message."""
    try:
        yield
    except KeyboardInterrupt:
        rundir.set_status(out_root, "interrupted", "interrupted by the user")
        raise KeyboardInterrupt(f"resume with: {resume_command}") from None


def resumed(out_root: Path, record: dict, runs_dir: Path) -> tuple[Path, dict[str, dict], float]:
    """A comparison to continue: (the directory its runs go to, its finished runs by variant label, the wall seconds
    it had run). One that stopped part-way runs what is missing; a finished one whose file has since gained recipes
    or seeds runs those (a finished one with nothing new only rebuilds its report). Only a comparison with the same
    name, overrides and budget, and the same seeds or more after them, resumes; its failed runs run again. The
    learning-rate search is re-derived from the recorded grid runs, so the same choice follows. From kept records
    (reports/<comparison>/records, perhaps made on another machine) the new runs go to a new runs directory, which
    starts with the records' base-model figures."""
    earlier = comparison_records.load(out_root)  # says what to pass where there is no comparison.json
    kept = comparison_records.MARK in earlier
    state = "finished" if kept else rundir.read_status(out_root)["state"]
    check(state != "running", f"--resume {out_root}: that comparison is still running; wait for it or stop it first")
    same = ("name", "overrides", "budget", "generate", "generate_seeds")
    # seeds may grow (more seeds narrow the interval); the first stays, since the learning-rate search ran on it
    grown = record["seeds"][:len(earlier.get("seeds", []))] == earlier.get("seeds")
    differs = [key for key in same if earlier.get(key) != record[key]] + ([] if grown else ["seeds"])
    check(not differs, f"--resume {out_root}: {', '.join(differs)} differ from that comparison's "
                       f"({', '.join(f'{k}={earlier.get(k)!r}' for k in differs)}); resume with the same options "
                       f"(seeds may only be added after the recorded ones)")
    record["resumed"] = [*earlier.get("resumed", []), record["command"]]
    record["command"] = earlier["command"]
    if kept:  # the records are rewritten after every run, so the kept runs move to the new runs directory first
        records, out_root = out_root, rundir.create(runs_dir, record["name"])
        earlier["variants"] = comparison_records.copy_into(records, earlier["variants"], out_root)
    rundir.set_status(out_root, "running")
    done = {Variant(Path(v["recipe"]), v["name"], v["seed"], lr=v["lr"], search=v.get("search", False)).label: v
            for v in earlier["variants"] if v["state"] != "failed"}
    return out_root, done, earlier.get("wall_seconds", 0.0)


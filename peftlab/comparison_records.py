"""A comparison's records, kept beside its report: reports/<comparison>/records/ holds comparison.json and, per run,
the small files every figure of the report comes from (status, recipe, environment, metrics, training log,
per-example predictions, generations) and the base model's figures (base/), but no weights.

Why: the runs directory holds gigabytes of weights and stays on the machine that ran it, so a report committed from
it could not be rebuilt elsewhere, and a comparison longer than one sitting could not be continued on another
machine. From these records `python -m peftlab.compare --report-only reports/<comparison>/records` rebuilds the
report, and `--resume reports/<comparison>/records` continues the comparison: its new runs go to a new runs
directory and join the records.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import rundir
from .errors import check

FILES = ("status.json", "recipe.json", "environment.json", "metrics.json", "log_history.json",
         *rundir.PREDICTIONS.values(), "generations.json")
BASE = "base"  # the base model's before-training figures (--base-cache), shared by the variants
MARK = "records_of"  # comparison.json key: the runs directory these records were kept from


def keep(record: dict, folder: Path) -> Path:
    """Write folder/comparison.json and each run's record files under folder/<variant label>/<run name>/, run paths
    relative to folder. Written beside and swapped in, so a reader never sees half a folder."""
    folder = Path(folder)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    variants = []
    for variant in record["variants"]:
        run = Path(variant["run"]) if variant.get("run") else None
        if run is not None and run.is_dir():
            kept = Path(run.parent.name) / run.name
            _keep_run(run, folder / kept, staging / kept)
            variant = variant | {"run": str(kept)}
        variants.append(variant)
    base = Path(record["dir"]) / BASE
    if base.is_dir():
        shutil.copytree(base, staging / BASE)
    kept_record = record | {"variants": variants, MARK: record.get(MARK, record["dir"])}
    rundir.write_json(staging / "comparison.json", kept_record)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def _keep_run(run: Path, earlier: Path, to: Path) -> None:
    """Copy a run's record files to `to`, or hard-link the copies kept last time when the run has not changed since
    (the same status.json): keep runs after every run of a comparison, and copying every finished run again each
    time made it O(runs²) copies of their predictions."""
    to.mkdir(parents=True)
    unchanged = (earlier / "status.json").is_file() and (run / "status.json").is_file() and \
        (earlier / "status.json").read_bytes() == (run / "status.json").read_bytes()
    for name in FILES:
        if unchanged and (earlier / name).is_file():
            try:
                os.link(earlier / name, to / name)
                continue
            except OSError:  # a file system without hard links: copy
                pass
        if (run / name).is_file():
            shutil.copy2(run / name, to / name)


def copy_into(records: Path, variants: list[dict], out_root: Path) -> list[dict]:
    """Copy the kept runs and the base model's figures into a new runs directory; the variants with their runs
    there."""
    if (records / BASE).is_dir():
        shutil.copytree(records / BASE, out_root / BASE)
    moved = []
    for variant in variants:
        if variant.get("run"):
            run = Path(variant["run"])
            variant = variant | {"run": str(shutil.copytree(run, out_root / run.parent.name / run.name))}
        moved.append(variant)
    return moved


def load(folder: Path) -> dict:
    """A comparison's record from its runs directory or its kept records; kept run paths are resolved against the
    folder they are kept in."""
    folder = Path(folder)
    check((folder / "comparison.json").is_file(), f"{folder} holds no comparison.json: pass runs/<comparison>-<stamp> "
                                                  "or reports/<comparison>/records")
    record = rundir.read_json(folder / "comparison.json")
    if MARK in record:
        record["variants"] = [v | {"run": str(folder / v["run"])} if v.get("run") else v for v in record["variants"]]
    return record

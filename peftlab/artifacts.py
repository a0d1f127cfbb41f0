"""What a run or a merge leaves on disk, read back: a finished run (the base model it was trained on, checked by
fingerprint, plus its weights) or a merged export (plain transformers weights plus the record of how it was made)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer

from . import models, rundir
from .building import build_base
from .errors import check
from .recipe import recipe_from_dict
from .tasks import get_task

EXPORT_RECORD = "peftlab_export.json"  # in an export folder: how it was made and verified, its recipe and labels


@dataclass
class Trained:
    recipe: object
    task: object
    model: object
    tokenizer: object
    labels: list[str]
    run_dir: Path


def check_base(run_dir: Path, resolved: models.Resolved) -> None:
    """Refuse a base whose weights differ from the ones the run was trained on."""
    recorded = rundir.read_json(run_dir / "environment.json")["model"].get("fingerprint")
    current = models.weights_fingerprint(resolved)
    if recorded is None or current is None:  # a Hub base: its revision names the weights, nothing to compare
        return
    check(recorded == current, f"run {run_dir} was trained on base weights sha256 {recorded[:12]}…, but "
                               f"{resolved.path} has {current[:12]}…: load the run with the base model it was trained on")


BASES = ("as_trained", "original", "dequantized")  # which base load_trained puts the run's weights on


def load_trained(run_dir: Path, base: str = "as_trained") -> Trained:
    """The run's weights on its base: "as_trained" (quantized if the run trained on a 4/8-bit base), "original"
    (the base's own full-precision weights) or "dequantized" (the quantized base as training saw it, turned back
    into float layers by transformers' dequantize: bitsandbytes' dequantize_4bit / int8 row scales, per layer)."""
    check(base in BASES, f"base={base!r}: use one of {', '.join(BASES)}")
    run_dir = rundir.require_finished(run_dir)
    recipe = recipe_from_dict(rundir.read_json(run_dir / "recipe.json"))
    labels = rundir.read_json(run_dir / "metrics.json")["labels"]
    task = get_task(recipe.model.task)
    resolved = models.resolve(recipe.model.name, recipe.model.revision)
    check_base(run_dir, resolved)
    tokenizer = models.load_tokenizer(models.Resolved(str(run_dir / "tokenizer"), "local"), recipe.model)
    model = build_base(recipe, task, resolved, labels, quantized=base != "original")
    if base == "dequantized" and recipe.quant is not None:
        model = model.dequantize()  # before the adapter wraps it: peft then adds plain (mergeable) float layers
    model = recipe.method.load(model, run_dir)
    model.eval()
    return Trained(recipe, task, model, tokenizer, labels, run_dir)


def load_export(export_dir: Path) -> Trained:
    """A merged export (peftlab.merge): plain transformers weights, plus the record of how it was made."""
    record = rundir.read_json(export_dir / EXPORT_RECORD)
    recipe = recipe_from_dict(record["recipe"])
    task = get_task(recipe.model.task)
    model = task.MODEL_CLASS.from_pretrained(export_dir).eval()
    return Trained(recipe, task, model, AutoTokenizer.from_pretrained(export_dir), record["labels"], export_dir)


def recorded_data_files(path: Path) -> dict:
    """The data files a run read ("folder/file" -> md5), for a run directory or an export (from its source run)."""
    path = Path(path)
    if (path / EXPORT_RECORD).is_file():
        return rundir.read_json(path / EXPORT_RECORD).get("data_files", {})
    return rundir.read_json(path / "environment.json")["data"].get("files", {})


def load_any(path: Path) -> Trained:
    """A run directory or a merged export."""
    path = Path(path)
    return load_export(path) if (path / EXPORT_RECORD).is_file() else load_trained(path)

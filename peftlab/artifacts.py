"""What a run or a merge leaves on disk, read back: a finished run (the base model it was trained on, checked by
fingerprint, plus its weights) or a merged export (plain transformers weights plus the record of how it was made)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from transformers import AutoTokenizer

from . import models, rundir
from .building import build_base
from .errors import check
from .methods.base import readable_weights
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


def add_adapter(trained: Trained, name: str, run_dir: Path) -> Trained:
    """Another run's adapter loaded beside `trained`'s into the same base model (peft multi-adapter; the caller picks
    one with model.set_adapter(name)). Refused, before loading, when it was trained on other base weights (the
    fingerprint check), for another task, quantization or head, or when the base holds no peft adapters to add to.
    Returns the adapter's view: its recipe and labels, the shared model and tokenizer."""
    from peft import PeftConfig, PeftModel

    run_dir = rundir.require_finished(run_dir)
    recipe = recipe_from_dict(rundir.read_json(run_dir / "recipe.json"))
    labels = rundir.read_json(run_dir / "metrics.json")["labels"]
    base = trained.recipe
    where = f"adapter {name} ({run_dir})"
    check(isinstance(trained.model, PeftModel), f"{where}: {trained.run_dir} holds no peft adapter to add others "
                                                  "to (a merged export or a full or bottleneck fine-tune); serve a run "
                                                  "directory of a LoRA, DoRA, IA3, prefix or prompt tuning run")
    check(recipe.model.task == base.model.task, f"{where}: its task is {recipe.model.task}, the served model's is "
                                                f"{base.model.task}; serve it on its own")
    resolved = models.resolve(base.model.name, base.model.revision)
    same_name = (recipe.model.name, recipe.model.revision) == (base.model.name, base.model.revision)
    check(resolved.source != "hub" or same_name,  # a Hub base has no fingerprint: its name and revision say which
          f"{where}: trained on {recipe.model.name}, the served base is {base.model.name}; serve it on its own")
    check_base(run_dir, resolved)
    check(recipe.quant == base.quant and recipe.model.head == base.model.head and len(labels) == len(trained.labels),
          f"{where}: its quantization, head or number of labels differ from {trained.run_dir}'s, so it cannot share "
          "that model; serve it on its own")
    folder = run_dir / recipe.method.saves
    with readable_weights(folder):
        kind = PeftConfig.from_pretrained(folder).peft_type if (folder / "adapter_config.json").is_file() else None
    check(kind == trained.model.peft_type, f"{where}: a {recipe.method.kind} adapter cannot join the served "
                                           f"{base.method.kind} adapter (peft holds one kind per model); serve it on "
                                           "its own")
    with readable_weights(folder):
        trained.model.load_adapter(folder, adapter_name=name)
    trained.model.eval()
    return replace(trained, recipe=recipe, labels=labels, run_dir=run_dir)


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

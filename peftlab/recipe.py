"""Recipes: plain frozen dataclasses, loaded from a Python file and validated field by field.

A recipe module defines a top-level `recipe = Recipe(...)`. `load_recipe(path, overrides)` executes it,
applies `--set a.b=value` overrides with type checking, and validates every field, so a bad recipe fails
with one line naming the field and the fix before any model or data is touched.

Why the type checks are hand-written (_matches, _describe, _parse_value) rather than pydantic's TypeAdapter: tried
with pydantic 2.14 in strict mode, it would replace only _matches (about 20 lines). Its errors say "Input should be
a valid integer" over three or more lines (a union gives one error per member), so the one-line "field=value:
expected int" messages would still be built here from the field's type, i.e. _describe stays; strict mode cannot
read `--set` text ("none", "a,b" as a list) and lax mode would also accept "32" for an int in a recipe, so
_parse_value stays; and a TypeAdapter takes about 50 ms to build per type, seconds for every command's start-up
over a recipe's fields unless cached. A new dependency for ~20 lines is not worth it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import runpy
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import PeftlabError, check
from .heads import HEAD_TASKS, MLPHead
from .losses import LOSS_TASKS, LOSSES, CrossEntropy, Loss, check_labels
from .methods import METHODS
from .quant import QUANTS

Task = Literal["classification", "regression", "token_classification", "qa", "causal_lm"]


@dataclass(frozen=True)
class Model:
    name: str  # Hub id, local folder, or a name with a packaged offline copy (see models.py)
    task: Task = "classification"
    labels: list[str] | None = None  # label names, index = class id (classification)
    trust_remote_code: bool = False  # executes code from the model repo: off unless asked for
    revision: str | None = None
    dropout: float | None = None  # override every dropout probability of the base (None: keep the model's)
    head: MLPHead | None = None  # replace the linear task head by a small MLP (None: the model's own head)

    def check(self, where: str) -> None:
        check(self.dropout is None or 0 <= self.dropout < 1, f"{where}.dropout={self.dropout}: use [0, 1) or None")
        if self.labels is not None:
            check(len(self.labels) >= 2, f"{where}.labels: need at least 2 label names, got {self.labels}")
            check(len(set(self.labels)) == len(self.labels), f"{where}.labels: names must be unique")


@dataclass(frozen=True)
class Data:
    name: str = ""  # Hub dataset ("glue/sst2", "user/ds") or local folder; offline: <data_dir>/<last part of name>
    # or your own files, split name -> path (.csv .tsv .jsonl .json .parquet .conll); relative paths are read from the
    # data directory (--data-dir / $PEFTLAB_DATA_DIR), else from the current directory. Give name or files.
    files: dict[str, str] | None = None
    text: str = "text"  # input column
    text_pair: str | None = None  # second input column for sentence-pair tasks
    label: str = "label"
    max_length: int = 128  # truncation length; batches are padded dynamically, never to this length
    train_split: str = "train"
    eval_split: str = "validation"
    train_limit: int | None = None  # use a random subset of this many training examples (drawn with data.seed)
    eval_limit: int | None = None  # likewise for the evaluation split (and the test split)
    # extractive QA (model.task="qa") only: long contexts are read in windows of max_length tokens
    stride: int = 128  # tokens shared by consecutive windows over one context
    max_answer_length: int = 30  # longest answer span considered when decoding, in tokens
    n_best: int = 20  # best start and end positions per window tried when decoding
    # regression only: the model learns target / label_scale (e.g. STS-B 0-5 -> 0-1, so a fresh head needs small
    # outputs); predict multiplies back, correlations are unchanged, the evaluation loss is on the learned scale
    label_scale: float = 1.0
    # checkpoints are selected on examples held out of the train split, never on eval_split (scored once, after
    # training): a fraction (at most SELECTION_CAP examples) or a count; see data.load_splits
    selection: float = 0.1
    test_split: str | None = None  # a labelled test split, scored once after training beside eval_split
    seed: int = 0  # draws the selection split and every subset: the same data whatever train.seed
    # causal language modelling (model.task="causal_lm") only, see peftlab/tasks/causal_lm.py
    prompt_template: str | None = None  # e.g. "Question: {question}\nAnswer: "; None: the tokenizer's chat template
    strip_regex: str | None = None  # removed from responses before training, e.g. GSM8K's r"<<[^>]*>>"
    packing: bool = False  # pack several short training examples into one row (kept apart by position ids)
    generate_split: str | None = None  # split whose first generate_limit prompts are answered by greedy decoding
    generate_limit: int | None = None
    max_new_tokens: int = 256
    # instruction data in a common shape, rendered with the chat template (peftlab/chat.py); None: text -> label
    chat_format: Literal["alpaca", "sharegpt", "messages"] | None = None
    columns: dict[str, str] | None = None  # the chat format's column names -> the data's, e.g. {"output": "answer"}

    def check(self, where: str) -> None:
        self.check_source(where)
        check(8 <= self.max_length <= 8192, f"{where}.max_length={self.max_length}: use a value in 8..8192")
        for name in ("train_limit", "eval_limit"):
            value = getattr(self, name)
            check(value is None or value > 0, f"{where}.{name}={value}: use a positive count or None for all")
        check(self.stride >= 0, f"{where}.stride={self.stride}: use a non-negative overlap, e.g. 128")
        check(self.max_answer_length >= 1, f"{where}.max_answer_length={self.max_answer_length}: must be >= 1, e.g. 30")
        check(self.n_best >= 1, f"{where}.n_best={self.n_best}: must be >= 1, e.g. 20")
        check(self.label_scale > 0, f"{where}.label_scale={self.label_scale}: must be > 0, e.g. 5 for 0-5 scores")
        check(0 < self.selection < 1 or (self.selection >= 1 and float(self.selection).is_integer()),
              f"{where}.selection={self.selection}: use a fraction of the train split in (0, 1) or a whole count")
        check(self.eval_split != self.train_split,
              f"{where}.eval_split={self.eval_split!r}: the reported split must not be the train split (checkpoints "
              "are selected on data.selection examples held out of it); use another split, e.g. 'test'")
        check(self.test_split not in (self.train_split, self.eval_split),
              f"{where}.test_split={self.test_split!r}: must differ from train_split and eval_split, or be None")
        check(self.seed >= 0, f"{where}.seed={self.seed}: use a non-negative seed")
        check(self.generate_limit is None or self.generate_limit > 0,
              f"{where}.generate_limit={self.generate_limit}: use a positive count or None for the whole split")
        check(1 <= self.max_new_tokens <= 8192, f"{where}.max_new_tokens={self.max_new_tokens}: use 1..8192")
        if self.strip_regex is not None:
            try:
                re.compile(self.strip_regex)
            except re.error as err:
                raise PeftlabError(f"{where}.strip_regex={self.strip_regex!r}: not a regular expression ({err})") from None
        if self.chat_format is not None:
            from .chat import check_chat_data

            check_chat_data(self, where)
        else:
            check(self.columns is None, f"{where}.columns maps the columns of a data.chat_format; for other data name "
                                        "the columns with data.text/data.label")

    def check_source(self, where: str) -> None:
        """A Hub id or folder (name) or local files, and a file for every split the recipe reads."""
        from .data import SUFFIXES, file_type, split_names

        check(bool(self.name) != bool(self.files), f"{where}: give data.name (a Hub dataset or a folder) or "
                                                   "data.files (split -> file), not both and not neither")
        for split, path in (self.files or {}).items():
            check(file_type(path) in SUFFIXES, f"{where}.files[{split!r}]={path!r}: unknown file type; use one of "
                                               f"{', '.join(SUFFIXES)}")
        missing = [s for s in split_names(self) if self.files and s not in self.files]
        check(not missing, f"{where}.files has no split {', '.join(map(repr, missing))} (files: "
                           f"{', '.join(self.files or [])}); add its file to data.files or set data.train_split/"
                           "eval_split/test_split/generate_split to one of them")


@dataclass(frozen=True)
class Train:
    epochs: float = 1.0
    lr: float = 5e-4
    batch_size: int = 32  # examples per optimizer step, over all processes
    eval_batch_size: int = 128  # at most this many per evaluation/generation batch (peftlab/levers.py may use fewer)
    # prompts generated together (causal LM); None: as many as keep generation below the training peak (levers)
    generation_batch_size: int | None = None
    # memory levers (peftlab/levers.py): "auto" checkpoints the causal LM's layers, not the short-sequence encoders
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    micro_batch_size: int | None = None  # examples per forward pass (over all processes); None: batch_size
    # freed memory back to the system after every step (True: lowest RSS; each step faults its pages in again), every
    # N steps (an int), or between phases only (False); "auto": every step where memory is short or under --budget,
    # else between phases only (levers.choose_trimming)
    trim_memory: bool | int | Literal["auto"] = "auto"
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    seed: int = 0
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    evals_per_epoch: int = 1
    logging_steps: int = 50
    group_by_length: bool = True  # batches of similar length: far less padding, same data
    loss: Loss = field(default_factory=CrossEntropy)  # CrossEntropy() as is: the model's own loss
    checkpoint_steps: int | None = None  # also checkpoint every this many steps (None: at evaluations only)
    keep_checkpoints: int = 2  # newest checkpoints kept for --resume (the best one is kept in addition)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: the GPU when torch sees one, else the CPU
    # "auto": bf16 autocast on a CPU with native bf16 (not on a quantized base), else float32 (peftlab/speed.py)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # trackers Trainer reports to (peftlab/tracking.py): "auto" is TensorBoard when installed, [] none, or names such
    # as ["tensorboard", "wandb", "mlflow"]
    report_to: Literal["auto"] | list[str] = "auto"

    def check(self, where: str) -> None:
        check(0 < self.epochs <= 100, f"{where}.epochs={self.epochs}: use a value in (0, 100]")
        check(0 < self.lr < 1, f"{where}.lr={self.lr}: the learning rate must be in (0, 1), e.g. 5e-4")
        check(self.batch_size >= 1, f"{where}.batch_size={self.batch_size}: use a positive batch size")
        check(self.micro_batch_size is None or (self.micro_batch_size >= 1 and self.batch_size % self.micro_batch_size == 0),
              f"{where}.micro_batch_size={self.micro_batch_size}: must divide batch_size={self.batch_size}, e.g. "
              f"{max(d for d in range(1, self.batch_size // 2 + 1) if self.batch_size % d == 0)}, or None")
        check(self.eval_batch_size >= 1, f"{where}.eval_batch_size={self.eval_batch_size}: use a positive size")
        check(self.generation_batch_size is None or self.generation_batch_size >= 1,
              f"{where}.generation_batch_size={self.generation_batch_size}: use a positive size or None")
        check(0 <= self.warmup_ratio < 1, f"{where}.warmup_ratio={self.warmup_ratio}: use a value in [0, 1)")
        check(self.weight_decay >= 0, f"{where}.weight_decay={self.weight_decay}: must be >= 0")
        check(self.max_grad_norm > 0, f"{where}.max_grad_norm={self.max_grad_norm}: must be > 0")
        check(self.seed >= 0, f"{where}.seed={self.seed}: use a non-negative seed")
        check(self.max_steps is None or self.max_steps > 0, f"{where}.max_steps={self.max_steps}: must be > 0")
        check(self.early_stopping_patience is None or self.early_stopping_patience > 0,
              f"{where}.early_stopping_patience: must be > 0 or None")
        check(self.evals_per_epoch >= 1, f"{where}.evals_per_epoch={self.evals_per_epoch}: must be >= 1")
        check(isinstance(self.trim_memory, (bool, str)) or self.trim_memory >= 1,
              f"{where}.trim_memory={self.trim_memory}: use a number of steps >= 1, or false for between phases only")
        check(self.logging_steps >= 1, f"{where}.logging_steps={self.logging_steps}: must be >= 1")
        check(self.checkpoint_steps is None or self.checkpoint_steps >= 1,
              f"{where}.checkpoint_steps={self.checkpoint_steps}: use a positive step count, or None")
        check(self.keep_checkpoints >= 1, f"{where}.keep_checkpoints={self.keep_checkpoints}: must be >= 1 "
                                          "(the newest checkpoint is what --resume continues from)")
        if self.report_to not in ("auto", []):  # names: transformers' list of trackers is imported only then
            from .tracking import check_names

            check_names(self.report_to, where)


@dataclass(frozen=True)
class Recipe:
    name: str
    model: Model
    data: Data
    method: Any  # one of the registered method dataclasses (peftlab.methods)
    train: Train = field(default_factory=Train)
    quant: Any = None  # None, Quant4bit or Quant8bit (peftlab.quant)

    def check(self, where: str) -> None:
        check(re.fullmatch(r"[A-Za-z0-9_.-]+", self.name) is not None,
              f"{where}.name={self.name!r}: use letters, digits, '_', '-' or '.' (it names files)")
        if self.model.task == "qa":  # a window holds the question, the overlap and some new context
            check(self.data.stride < self.data.max_length // 2,
                  f"{where}.data.stride={self.data.stride}: must be below half of data.max_length="
                  f"{self.data.max_length} for qa, e.g. max_length=384 with stride=128")
        task = self.model.task
        check(self.data.label_scale == 1 or task == "regression",
              f"{where}.data.label_scale: scales regression targets; remove it for model.task={task!r}")
        check(self.model.head is None or task in HEAD_TASKS,
              f"{where}.model.head: custom heads are for {', '.join(HEAD_TASKS)}, not {task}; remove model.head")
        check(self.train.loss.is_default or task in LOSS_TASKS,
              f"{where}.train.loss: {type(self.train.loss).__name__} is for {' and '.join(LOSS_TASKS)}; {task} trains "
              "with its model's own loss: remove train.loss")
        if self.model.labels is not None:
            check_labels(self.train.loss, self.model.labels, f"{where}.train.loss")
        check(not (self.train.gradient_checkpointing is True and self.method.kind == "prefix"),
              f"{where}.train.gradient_checkpointing=True: transformers drops the key-value cache that carries "
              "PrefixTuning's prefixes from checkpointed layers; use 'auto' or False with PrefixTuning")
        if self.model.task != "causal_lm":
            defaults = Data(self.data.name)
            for name in ("prompt_template", "strip_regex", "packing", "generate_split", "generate_limit",
                         "max_new_tokens", "chat_format"):
                check(getattr(self.data, name) == getattr(defaults, name),
                      f"{where}.data.{name} is for model.task='causal_lm'; remove it for {self.model.task!r}")
        elif self.data.packing:  # their virtual tokens / key-value prefixes would bridge the packed examples
            check(self.method.kind not in ("prefix", "prompt"),
                  f"{where}.data.packing: {type(self.method).__name__} cannot keep packed examples apart (peft "
                  "drops position ids for prompt tuning; a key-value prefix turns off transformers' packed-sequence "
                  "mask); set packing=False or use LoRA, DoRA, IA3, a bottleneck adapter or full "
                  "fine-tuning")


# ---------------------------------------------------------------------------------------------- validation

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(tp)
        return isinstance(value, dict) and all(_matches(k, key) and _matches(v, item) for k, v in value.items())
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return _type_name(tp)


def validate(obj: Any, where: str = "recipe") -> None:
    """Check types of every field (recursively), then each part's own range checks."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, tp, path = getattr(obj, f.name), hints[f.name], f"{where}.{f.name}"
        if f.name == "method":
            check(isinstance(value, tuple(METHODS.values())),
                  f"{path}: {type(value).__name__} is not a method; use one of "
                  + ", ".join(c.__name__ for c in tuple(METHODS.values())))
        elif f.name == "quant" and isinstance(obj, Recipe):
            check(value is None or isinstance(value, tuple(QUANTS.values())),
                  f"{path}: use None, " + " or ".join(c.__name__ + "(...)" for c in tuple(QUANTS.values())))
        else:
            check(_matches(value, tp), f"{path}={value!r}: expected {_describe(tp)}")
        if dataclasses.is_dataclass(value):
            validate(value, path)
    if hasattr(obj, "check"):
        obj.check(where)
    if isinstance(obj, Recipe):
        obj.method.check_recipe(obj)
        if obj.quant is not None:
            obj.quant.check_recipe(obj)


# ------------------------------------------------------------------------------------------------- loading

def _recipe_parts() -> dict[str, type]:
    """The classes `from peftlab import *` gives a recipe, by name."""
    parts = (Recipe, Model, Data, Train, MLPHead, *LOSSES.values(), *METHODS.values(), *QUANTS.values())
    return {cls.__name__: cls for cls in parts}


_UNKNOWN_KWARG = re.compile(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'")


def _unknown_field_message(err: TypeError, path: Path) -> str | None:
    match = _UNKNOWN_KWARG.search(str(err))
    if not match:
        return None
    cls_name, key = match.groups()
    cls = _recipe_parts().get(cls_name)
    valid = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    hint = difflib.get_close_matches(key, valid, n=1)
    suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
    return f"{path}: unknown field '{key}' in {cls_name}{suggestion}; valid fields: {', '.join(valid)}"


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    check(path.is_file(), f"recipe file {path} not found: pass the path of a recipes/*.py file")
    sys.path.insert(0, str(path.resolve().parent))  # recipes import their base recipe by module name
    try:
        namespace = runpy.run_path(str(path))
    except SyntaxError as err:
        raise PeftlabError(f"{path}:{err.lineno}: syntax error in recipe: {err.msg}") from None
    except TypeError as err:
        raise PeftlabError(_unknown_field_message(err, path) or f"{path}: {err}") from None
    except NameError as err:  # e.g. a misspelled method class
        hint = difflib.get_close_matches(err.name or "", [*_recipe_parts(), "load_recipe"], n=1)
        raise PeftlabError(f"{path}: {err}" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                           + "; recipes get their parts with `from peftlab import *`") from None
    except PeftlabError:
        raise
    except Exception as err:  # the recipe is user code: report where it failed, in one line
        raise PeftlabError(f"{path}: recipe raised {type(err).__name__}: {err}") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    recipe = namespace.get("recipe")
    check(isinstance(recipe, Recipe), f"{path}: define a top-level `recipe = Recipe(...)`")
    recipe = apply_overrides(recipe, overrides)
    validate(recipe)
    return recipe


# ----------------------------------------------------------------------------------------------- overrides

def _parse_value(text: str, tp: Any, path: str) -> Any:
    """Turn the text of `--set path=text` into a value of the field's declared type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        candidates = [a for a in args if a is not type(None)]
        if "," in text or text.startswith("["):  # "a,b" and "[a]" read as a list where the field accepts one
            candidates.sort(key=lambda a: typing.get_origin(a) is not list)
        for arg in candidates:
            try:
                return _parse_value(text, arg, path)
            except PeftlabError as err:
                errors.append(str(err))
        expected = f"--set {path}={text}: expected "  # every alternative named: "true or false, or one of auto"
        if len(errors) > 1 and all(e.startswith(expected) for e in errors):
            raise PeftlabError(expected + ", or ".join(e.removeprefix(expected) for e in errors))
        raise PeftlabError(errors[0] if errors else f"--set {path}: cannot parse {text!r}")
    if origin is list:  # a,b — or a list as a recipe writes it, ["a", "b"]
        items = text[1:-1].split(",") if text.startswith("[") and text.endswith("]") else text.split(",")
        return [_parse_value(item.strip().strip("'\""), args[0], path) for item in items if item.strip()]
    if origin is Literal:
        check(text in args, f"--set {path}={text}: expected one of {', '.join(map(str, args))}")
        return text
    if tp is bool:
        check(text.lower() in ("true", "false", "1", "0"), f"--set {path}={text}: expected true or false")
        return text.lower() in ("true", "1")
    if tp in (int, float):
        try:
            return tp(text) if tp is float else int(text)
        except ValueError:
            raise PeftlabError(f"--set {path}={text}: expected {tp.__name__}") from None
    if tp is str or tp is Any:
        return text
    raise PeftlabError(f"--set {path}: fields of type {_type_name(tp)} cannot be set from the command line")


def _set(obj: Any, keys: list[str], text: str, path: str) -> Any:
    names = [f.name for f in dataclasses.fields(obj)]
    key = keys[0]
    if key not in names:
        hint = difflib.get_close_matches(key, names, n=1)
        raise PeftlabError(f"--set {path}: {type(obj).__name__} has no field '{key}'"
                           + (f" (did you mean '{hint[0]}'?)" if hint else "")
                           + f"; valid fields: {', '.join(names)}")
    current = getattr(obj, key)
    tp = typing.get_type_hints(type(obj))[key]
    if dict in {typing.get_origin(a) for a in (tp, *typing.get_args(tp))}:  # the dict fields map str -> str
        check(len(keys) == 2, f"--set {path}: set one entry of it, e.g. {path}.<key>=...")
        return dataclasses.replace(obj, **{key: (current or {}) | {keys[1]: text}})  # --set data.files.train=x.csv
    if len(keys) > 1:
        check(dataclasses.is_dataclass(current), f"--set {path}: '{key}' has no sub-fields")
        return dataclasses.replace(obj, **{key: _set(current, keys[1:], text, path)})
    check(not dataclasses.is_dataclass(current), f"--set {path}: set one of its fields, e.g. {path}.<field>=...")
    return dataclasses.replace(obj, **{key: _parse_value(text, tp, path)})


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    for item in overrides:
        path, sep, text = item.partition("=")
        check(bool(sep) and bool(path), f"--set {item!r}: use the form section.field=value, e.g. train.lr=1e-4")
        recipe = _set(recipe, path.strip().split("."), text.strip(), path.strip())
    return recipe


# ------------------------------------------------------------------------------------- records (run dirs)

def recipe_to_dict(recipe: Recipe) -> dict:
    """Plain JSON-able form, with the kind of method and quantization named so it can be rebuilt."""
    out = dataclasses.asdict(recipe)
    out["method"] = {"kind": recipe.method.kind, **dataclasses.asdict(recipe.method)}
    out["train"]["loss"] = {"kind": recipe.train.loss.kind, **dataclasses.asdict(recipe.train.loss)}
    if recipe.model.head is not None:
        out["model"]["head"] = {"kind": recipe.model.head.kind, **dataclasses.asdict(recipe.model.head)}
    if recipe.quant is not None:
        out["quant"] = {"kind": recipe.quant.kind, **dataclasses.asdict(recipe.quant)}
    return out


def recipe_from_dict(data: dict) -> Recipe:
    method = dict(data["method"])
    quant = dict(data["quant"]) if data.get("quant") else None
    model, train = dict(data["model"]), dict(data["train"])
    if model.get("head"):
        model["head"] = MLPHead(**{k: v for k, v in model["head"].items() if k != "kind"})
    if "loss" in train:  # records written before losses existed have none: the model's own loss
        loss = dict(train["loss"])
        train["loss"] = LOSSES[loss.pop("kind")](**loss)
    recipe = Recipe(
        name=data["name"],
        model=Model(**model),
        data=Data(**data["data"]),
        method=METHODS[method.pop("kind")](**method),
        train=Train(**train),
        quant=QUANTS[quant.pop("kind")](**quant) if quant else None,
    )
    validate(recipe)
    return recipe

"""What every method provides, and the shared save/load of methods that peft implements."""

from __future__ import annotations

import contextlib
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..errors import PeftlabError, check


@dataclass(frozen=True)
class Context:
    """What a method needs to know about the model it wraps."""

    heads: tuple[str, ...]  # task-head modules present in the model: trainable, saved with the adapter
    peft_task_type: str  # peft TaskType name, e.g. "SEQ_CLS"
    quantized: bool  # the base holds 4-bit/8-bit weights
    model_path: str = ""  # where the base (and its tokenizer) was loaded from
    # a few training batches (model inputs, no labels), for initialisations fitted to the data (LoRA's EVA, CorDA);
    # None where no data is at hand and only shapes matter (memory planning)
    batches: Callable[[], list[dict]] | None = None


@contextlib.contextmanager
def readable_weights(folder: Path):
    """A truncated or garbled weights/config file, or a pickle (which torch.load(weights_only=True) refuses unrun) in
    place of the safetensors file: one line, not the traceback of safetensors, torch or json."""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, pickle.UnpicklingError, json.JSONDecodeError, EOFError) as err:
        problem = ("holds a pickle weights file, refused unread (loading it could run code)"
                   if isinstance(err, pickle.UnpicklingError) else
                   f"a saved file is truncated or garbled ({type(err).__name__}: {str(err).strip()[:120]})")
        raise PeftlabError(f"{folder}: {problem}; restore the folder as the run saved it (safetensors) or rerun "
                           "the recipe") from None


def peft_targets(target):
    """A recipe's target as peft's target_modules: "all-linear" and None (peft's default) as they are, a module name
    as a one-name list. peft reads a bare string as a regex on the full module name, where a list matches any
    module ending in a name: the meaning the README gives every method's target."""
    return target if target is None or target == "all-linear" else [target] if isinstance(target, str) else list(target)


def check_target_and_dropout(method, where: str) -> None:
    """The two field checks every method with target modules and a dropout shares."""
    check(bool(method.target), f"{where}.target: name the modules to adapt, e.g. ['query', 'value'] or 'all-linear'")
    check(0 <= method.dropout < 1, f"{where}.dropout={method.dropout}: use a value in [0, 1)")


class Method:
    kind: ClassVar[str]
    mergeable: ClassVar[bool] = False  # can be folded into the base weights (peftlab.merge)
    quantizable: ClassVar[bool] = False  # may run on a 4-bit / 8-bit base
    saves: ClassVar[str] = "adapter"  # sub-folder of the run directory holding the trained weights

    def check(self, where: str) -> None:
        """Range checks of the method's own fields."""

    def check_recipe(self, recipe) -> None:
        """Combination checks, run at recipe load before any model is loaded."""
        check(recipe.quant is None or self.quantizable,
              f"recipe.method: {type(self).__name__} cannot run on a quantized base; set quant=None "
              "or use LoRA, DoRA, IA3 or a bottleneck adapter")

    def wrap(self, model, ctx: Context):
        raise NotImplementedError

    def optimizer(self, model, args):
        """An optimizer of the method's own (LoRA+), built from the TrainingArguments; None: Trainer's own."""
        return None

    def callbacks(self) -> list:
        """Trainer callbacks the method needs while training (AdaLoRA's rank schedule)."""
        return []

    def save(self, model, run_dir: Path) -> None:
        raise NotImplementedError

    def load(self, base_model, run_dir: Path):
        raise NotImplementedError


class PeftMethod(Method):
    """Methods implemented by peft: wrap with a peft config, save/load in standard peft format."""

    def peft_config(self, ctx: Context):
        raise NotImplementedError

    def wrap(self, model, ctx: Context):
        return self.peft_model(model, self.peft_config(ctx))

    def peft_model(self, model, config):
        from peft import get_peft_model

        try:
            return get_peft_model(model, config)
        except ValueError as err:  # e.g. target modules not found: say which layers exist
            import torch

            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
            target = getattr(self, "target", None)
            raise PeftlabError(f"recipe.method{'.target=' + repr(target) if target else ''}: "
                               f"{str(err).splitlines()[0][:160]} — linear layers of {type(model).__name__}: "
                               f"{', '.join(linear)}") from None

    def save(self, model, run_dir: Path) -> None:
        model.save_pretrained(run_dir / self.saves)  # adapter_config.json + adapter_model.safetensors (+ head)

    def load(self, base_model, run_dir: Path):
        from peft import PeftModel

        with readable_weights(run_dir / self.saves):
            return PeftModel.from_pretrained(base_model, run_dir / self.saves)

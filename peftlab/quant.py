"""Quantized bases through bitsandbytes: 4-bit (NF4/FP4, QLoRA) and 8-bit (LLM.int8). Its own recipe part."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from .errors import check


@dataclass(frozen=True)
class Quant4bit:
    type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True  # quantize the quantization constants too (~0.37 bit/param saved)
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    kind = "4bit"

    def check(self, where: str) -> None:
        pass

    def check_recipe(self, recipe) -> None:
        _check_bnb_available()

    def bnb_config(self, skip_modules: list[str]):
        import torch
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.type,
                                  bnb_4bit_use_double_quant=self.double_quant,
                                  bnb_4bit_compute_dtype=getattr(torch, self.compute_dtype),
                                  llm_int8_skip_modules=skip_patterns(skip_modules))


@dataclass(frozen=True)
class Quant8bit:
    threshold: float = 6.0  # LLM.int8 outlier threshold
    kind = "8bit"

    def check(self, where: str) -> None:
        check(self.threshold > 0, f"{where}.threshold={self.threshold}: must be > 0 (6.0 is the usual value)")

    def check_recipe(self, recipe) -> None:
        _check_bnb_available()

    def bnb_config(self, skip_modules: list[str]):
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=self.threshold,
                                  llm_int8_skip_modules=skip_patterns(skip_modules))


def full_precision_modules(task, method) -> tuple[str, ...]:
    """Module names bitsandbytes leaves in full precision: the task head, the task's other unquantized modules (a
    causal LM's output layer) and whatever the method trains in full (LoRA's modules_to_save, e.g. "pooler"):
    a 4/8-bit weight cannot train."""
    return (tuple(task.HEADS) + tuple(getattr(task, "UNQUANTIZED", ()))
            + tuple(getattr(method, "modules_to_save", ())))


def skip_patterns(names) -> list[str]:
    """transformers matches a skip pattern from the start of a module's full name or as its suffix, so "pooler"
    missed "bert.pooler.dense": anchor each name at any module boundary instead."""
    return [rf"(?:.*\.)?{re.escape(name)}" for name in names]


def keep_one_weight_layout(model) -> None:
    """bitsandbytes 0.50 repacks a Linear4bit weight in place into a CPU inference layout the first time the layer
    runs in eval mode without gradients on a CPU with AVX512-BF16, and never back; that layout's kernel has no
    autograd, so any training after an evaluation got silently wrong gradients (only a warning: "an autograd kernel
    was not registered"). Turning the repacking off keeps the trainable layout for evaluation too."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _check_bnb_available() -> None:
    import importlib.util

    check(importlib.util.find_spec("bitsandbytes") is not None,
          "recipe.quant needs bitsandbytes: run `pip install bitsandbytes` or set quant=None")


QUANTS = {q.kind: q for q in (Quant4bit, Quant8bit)}

"""Prefix tuning (Li & Liang 2021) through peft: trained key/value prefixes in every attention layer."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import check
from .base import Context, PeftMethod


@dataclass(frozen=True)
class PrefixTuning(PeftMethod):
    num_virtual_tokens: int = 20
    projection: bool = False  # reparameterise the prefix through a 2-layer MLP (more stable, more params)
    projection_hidden: int = 512  # hidden size of that MLP
    kind = "prefix"

    def check(self, where: str) -> None:
        check(1 <= self.num_virtual_tokens <= 512, f"{where}.num_virtual_tokens={self.num_virtual_tokens}: use 1..512")
        check(self.projection_hidden >= 1, f"{where}.projection_hidden={self.projection_hidden}: must be >= 1")

    def check_recipe(self, recipe) -> None:
        # peft #2035/#2662: prefix tuning breaks with quantized bases; refuse before loading anything.
        check(recipe.quant is None, "recipe.method: PrefixTuning does not run on a quantized base "
                                    "(peft #2035); set quant=None or use LoRA/DoRA/IA3/Houlsby/Pfeiffer")

    def peft_config(self, ctx: Context):
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(num_virtual_tokens=self.num_virtual_tokens, prefix_projection=self.projection,
                                  encoder_hidden_size=self.projection_hidden, task_type=ctx.peft_task_type,
                                  modules_to_save=list(ctx.heads) or None)

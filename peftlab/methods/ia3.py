"""IA3 (Liu et al. 2022) through peft: learned vectors rescale keys, values and feed-forward activations."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import check
from .base import Context, PeftMethod, peft_targets


@dataclass(frozen=True)
class IA3(PeftMethod):
    target: list[str] | None = None  # None: peft's default for the architecture (BERT: key, value, output.dense)
    feedforward: list[str] | None = None  # the subset of target scaled on the input side (feed-forward layers)
    kind = "ia3"
    mergeable = True
    quantizable = True

    def check(self, where: str) -> None:
        check(self.target is None or bool(self.target), f"{where}.target: name modules, or None for peft's default")
        check(self.feedforward is None or self.target is not None,
              f"{where}.feedforward: set target too (feed-forward modules must be a subset of target)")
        check(self.feedforward is None or set(self.feedforward) <= set(self.target or []),
              f"{where}.feedforward={self.feedforward}: every feed-forward module must also be in target")

    def peft_config(self, ctx: Context):
        from peft import IA3Config

        return IA3Config(target_modules=peft_targets(self.target), feedforward_modules=self.feedforward,
                         exclude_modules=list(ctx.heads) or None,
                         task_type=ctx.peft_task_type, modules_to_save=list(ctx.heads) or None)

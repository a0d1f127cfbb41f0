"""LoRA (Hu et al. 2021) through peft, with rsLoRA scaling; DoRA is the same with `use_dora`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import check
from .base import Context, PeftMethod


@dataclass(frozen=True)
class LoRA(PeftMethod):
    r: int = 8
    alpha: float = 16
    dropout: float = 0.1
    # module names (a name matches any module ending in it), or "all-linear" for every linear layer but the head
    target: str | list[str] = field(default_factory=lambda: ["query", "value"])
    rslora: bool = False  # scale by alpha/sqrt(r) instead of alpha/r (Kalajdzievski 2023)
    bias: str = "none"
    # modules trained in full beside the low-rank updates and saved with the adapter (peft's modules_to_save),
    # e.g. ["LayerNorm"]: a few thousand parameters that let the frozen encoder re-centre its features
    modules_to_save: list[str] = field(default_factory=list)
    kind = "lora"
    mergeable = True
    quantizable = True
    use_dora: ClassVar[bool] = False

    def check(self, where: str) -> None:
        check(self.r >= 1, f"{where}.r={self.r}: the rank must be >= 1, e.g. 8")
        check(self.alpha > 0, f"{where}.alpha={self.alpha}: must be > 0, e.g. 2*r")
        check(0 <= self.dropout < 1, f"{where}.dropout={self.dropout}: use a value in [0, 1)")
        check(bool(self.target), f"{where}.target: name the modules to adapt, e.g. ['query', 'value'] or 'all-linear'")
        check(self.bias in ("none", "all", "lora_only"), f"{where}.bias={self.bias!r}: use 'none', 'all' or 'lora_only'")

    def peft_config(self, ctx: Context):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target if self.target == "all-linear" else list(
                              [self.target] if isinstance(self.target, str) else self.target), exclude_modules=list(ctx.heads) or None,
                          use_rslora=self.rslora, use_dora=self.use_dora, bias=self.bias,
                          task_type=ctx.peft_task_type,
                          modules_to_save=list(ctx.heads) + list(self.modules_to_save) or None)


@dataclass(frozen=True)
class DoRA(LoRA):
    """Weight-decomposed LoRA (Liu et al. 2024): magnitude vector + LoRA direction."""

    kind = "dora"
    use_dora: ClassVar[bool] = True

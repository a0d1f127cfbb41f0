"""VeRA (Kopiczko et al. 2024) through peft: one pair of frozen random matrices shared by every adapted layer,
scaled per layer by two trained vectors (d: r values, b: out_features values)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import check
from .base import Context, PeftMethod, check_target_and_dropout, peft_targets


@dataclass(frozen=True)
class VeRA(PeftMethod):
    r: int = 256  # rank of the shared random matrices: costs one trained value per rank and layer
    # module names, or "all-linear"; layers of other shapes share slices of the largest pair (peft 0.21)
    target: str | list[str] = field(default_factory=lambda: ["query", "value"])
    dropout: float = 0.0
    d_initial: float = 0.1  # start of the d vectors (the b vectors start at 0: the wrapped model equals the base)
    projection_seed: int = 0  # seed of the shared random matrices (they are saved with the adapter too)
    kind = "vera"
    mergeable = True

    def check(self, where: str) -> None:
        check(self.r >= 1, f"{where}.r={self.r}: the rank must be >= 1, e.g. 256")
        check_target_and_dropout(self, where)
        check(self.d_initial > 0, f"{where}.d_initial={self.d_initial}: must be > 0, e.g. 0.1")

    def peft_config(self, ctx: Context):
        from peft import VeraConfig

        return VeraConfig(r=self.r, target_modules=peft_targets(self.target), vera_dropout=self.dropout, d_initial=self.d_initial,
                          projection_prng_key=self.projection_seed, save_projection=True,
                          task_type=ctx.peft_task_type,  # (VeraConfig has no exclude_modules; heads are never targets)
                          modules_to_save=list(ctx.heads) or None)

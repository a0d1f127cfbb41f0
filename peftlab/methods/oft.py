"""Orthogonal fine-tuning through peft: OFT (Qiu et al. 2023) rotates each adapted layer's input by a trained
block-diagonal orthogonal matrix; BOFT (Liu et al. 2024) builds the rotation from butterfly factors instead."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import check
from .base import Context, PeftMethod, check_target_and_dropout, peft_targets


@dataclass(frozen=True)
class OFT(PeftMethod):
    block_size: int = 32  # must divide the adapted layers' in_features (MiniLM: 384 and 1536)
    target: str | list[str] = field(default_factory=lambda: ["query", "value"])
    dropout: float = 0.0  # multiplicative dropout: whole blocks are set to the identity
    coft: bool = False  # constrained OFT: keep the rotation within eps of the identity
    eps: float = 6e-5
    kind = "oft"
    mergeable = True  # the rotation folds into the weight: W R

    def check(self, where: str) -> None:
        check(self.block_size >= 2, f"{where}.block_size={self.block_size}: use >= 2, a divisor of in_features, e.g. 32")
        check_target_and_dropout(self, where)
        check(self.eps > 0, f"{where}.eps={self.eps}: must be > 0, e.g. 6e-5")

    def peft_config(self, ctx: Context):
        from peft import OFTConfig

        return OFTConfig(r=0, oft_block_size=self.block_size, target_modules=peft_targets(self.target), module_dropout=self.dropout,
                         coft=self.coft, eps=self.eps, exclude_modules=list(ctx.heads) or None,
                         task_type=ctx.peft_task_type, modules_to_save=list(ctx.heads) or None)


@dataclass(frozen=True)
class BOFT(PeftMethod):
    """Without its CUDA extension (fbd_cuda: no GPU, nvcc or ninja) peft 0.21 runs BOFT in PyTorch and silently
    cuts the butterfly to 1 factor: block-diagonal rotations with a learned output scale. More factors are refused
    there rather than changed behind the recipe's back."""

    block_size: int = 8  # must divide the adapted layers' in_features
    butterfly_factors: int = 1  # butterfly depth > 1 mixes more dimensions; needs peft's CUDA extension
    target: str | list[str] = field(default_factory=lambda: ["query", "value"])
    dropout: float = 0.0  # multiplicative dropout of whole blocks
    kind = "boft"
    mergeable = True

    def check(self, where: str) -> None:
        check(self.block_size >= 2 and self.block_size % 2 == 0,
              f"{where}.block_size={self.block_size}: use an even size >= 2 that divides in_features, e.g. 8")
        check(self.butterfly_factors >= 1, f"{where}.butterfly_factors={self.butterfly_factors}: must be >= 1, e.g. 2")
        check_target_and_dropout(self, where)

    def peft_config(self, ctx: Context):
        from peft import BOFTConfig

        return BOFTConfig(boft_block_size=self.block_size, boft_n_butterfly_factor=self.butterfly_factors,
                          target_modules=peft_targets(self.target), boft_dropout=self.dropout,
                          exclude_modules=list(ctx.heads) or None, task_type=ctx.peft_task_type,
                          modules_to_save=list(ctx.heads) or None)

    def wrap(self, model, ctx: Context):
        # peft fills BOFT's permutation matrices by indexing, which memory planning's meta device cannot run
        with torch.device("cpu"):
            model = super().wrap(model, ctx)
        fallback = any(getattr(m, "fbd_cuda_available", True) is False for m in model.modules())
        check(self.butterfly_factors == 1 or not fallback,
              f"method.butterfly_factors={self.butterfly_factors}: peft's BOFT CUDA extension (fbd_cuda) is not "
              "available here and peft would silently use 1 factor; set butterfly_factors=1 or run on a GPU with "
              "nvcc and ninja")
        return model

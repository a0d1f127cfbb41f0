"""Full fine-tuning: every weight trains. The baseline every other method is measured against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .base import Context, Method


@dataclass(frozen=True)
class FullFineTuning(Method):
    kind = "full"
    saves = "model"

    def wrap(self, model, ctx: Context):
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def save(self, model, run_dir: Path) -> None:
        model.save_pretrained(run_dir / self.saves)

    def load(self, base_model, run_dir: Path):
        return type(base_model).from_pretrained(run_dir / self.saves)

"""Full fine-tuning: every weight trains. The baseline every other method is measured against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import check
from .base import Context, Method, readable_weights


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
        """The saved weights into the base built from the recipe (same module tree, custom head included;
        from_pretrained would rebuild the stock head and drop an MLP head's weights)."""
        from safetensors.torch import load_file

        folder = run_dir / self.saves
        files = sorted(folder.glob("*.safetensors"))
        check(bool(files), f"{folder}: no *.safetensors weights; the run did not save its model")
        with readable_weights(folder):
            weights = {k: v for file in files for k, v in load_file(str(file)).items()}
        missing, unexpected = base_model.load_state_dict(weights, strict=False)
        check(not missing and not unexpected, f"{folder}: missing {missing[:3]}, unexpected {unexpected[:3]}; the "
                                              "saved model does not match the recipe's model and head")
        return base_model

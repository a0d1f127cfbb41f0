"""Custom task heads, declared in the recipe as `Model(head=MLPHead(hidden=256, dropout=0.1))`.

The head replaces the model's linear head (`classifier` / `score`) right after loading, in every code path that
builds a model (training, reload, memory plan), so the saved weights always meet the same module tree. The new
head is a trained module like the linear one it replaces: peft keeps it in `modules_to_save` (saved with the
adapter), bottleneck adapters save it with their weights, full fine-tuning saves it with the model.
transformers has no MLP head class to name in a config, so a merged export (peftlab.merge) is refused for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import nn

from .errors import check

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}
HEAD_TASKS = ("classification", "regression", "token_classification")  # tasks whose head is one nn.Linear


@dataclass(frozen=True)
class MLPHead:
    """linear(hidden) -> activation -> dropout -> linear(outputs), in place of the single linear layer."""

    hidden: int = 256
    dropout: float = 0.1
    activation: Literal["gelu", "relu", "tanh"] = "gelu"
    kind: ClassVar[str] = "mlp"

    def check(self, where: str) -> None:
        check(self.hidden >= 1, f"{where}.hidden={self.hidden}: the hidden size must be >= 1, e.g. 256")
        check(0 <= self.dropout < 1, f"{where}.dropout={self.dropout}: use a value in [0, 1)")


class MLP(nn.Sequential):
    """A distinct class, so a model with a custom head can be told apart (see has_custom_head)."""

    def __init__(self, head: MLPHead, inputs: int, outputs: int):
        super().__init__(nn.Linear(inputs, head.hidden), ACTIVATIONS[head.activation](), nn.Dropout(head.dropout),
                         nn.Linear(head.hidden, outputs))


def attach(model, head: MLPHead, names: tuple[str, ...]):
    """Replace the first linear head among `names` by the recipe's MLP (initialised from the current seed)."""
    name = next((n for n in names if hasattr(model, n)), None)
    linear = getattr(model, name) if name else None
    check(isinstance(linear, nn.Linear),
          f"model.head: {type(model).__name__} has no linear head named {' or '.join(names)} to replace"
          + (f" ({name} is a {type(linear).__name__})" if name else "") + "; remove model.head for this model")
    setattr(model, name, MLP(head, linear.in_features, linear.out_features).to(linear.weight.device,
                                                                                linear.weight.dtype))
    return model


def has_custom_head(model) -> bool:
    return any(isinstance(m, MLP) for m in model.modules())

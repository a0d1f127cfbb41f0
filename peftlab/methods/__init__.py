"""Registered methods: each is one dataclass (its recipe part) in one file. Register a new one here."""

from .full import FullFineTuning
from .lora import DoRA, LoRA

METHODS = {m.kind: m for m in (FullFineTuning, LoRA, DoRA)}

__all__ = ["METHODS", "FullFineTuning", "LoRA", "DoRA"]

"""Registered methods: each is one dataclass (its recipe part) in one file. Register a new one here."""

from .adalora import AdaLoRA
from .bottleneck import Houlsby, Pfeiffer
from .full import FullFineTuning
from .ia3 import IA3
from .lora import DoRA, LoRA
from .oft import BOFT, OFT
from .prefix import PrefixTuning
from .prompt import PromptTuning
from .vera import VeRA

METHODS = {m.kind: m for m in (FullFineTuning, LoRA, DoRA, IA3, PrefixTuning, PromptTuning, Houlsby, Pfeiffer, VeRA,
                               AdaLoRA, OFT, BOFT)}

__all__ = ["METHODS", "FullFineTuning", "LoRA", "DoRA", "IA3", "PrefixTuning", "PromptTuning", "Houlsby", "Pfeiffer",
           "VeRA", "AdaLoRA", "OFT", "BOFT"]

"""DoRA: the LoRA recipe with weight decomposition (magnitude + direction)."""

from dataclasses import replace

from peftlab import DoRA
from lora_sst2 import recipe as lora

recipe = replace(lora, name="dora_sst2", method=DoRA(r=8, alpha=16, dropout=0.0, target="all-linear"))

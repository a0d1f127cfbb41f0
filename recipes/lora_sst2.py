"""LoRA on the SST-2 base."""

from dataclasses import replace

from peftlab import LoRA
from sst2_base import recipe as base

recipe = replace(base, name="lora_sst2", method=LoRA(r=8, alpha=16, dropout=0.1, target=["query", "value"]))

"""DoRA (magnitude + LoRA direction) on every linear layer of SmolLM2-135M-Instruct, GSM8K; no dropout, as
lora_gsm8k."""

from dataclasses import replace

from peftlab import DoRA
from lora_gsm8k import recipe as lora

recipe = replace(lora, name="dora_gsm8k", method=DoRA(r=16, alpha=32, dropout=0.0, target="all-linear"))

"""rsLoRA on GSM8K: the LoRA recipe scaled by alpha/sqrt(r) instead of alpha/r (Kalajdzievski 2023)."""

from dataclasses import replace

from lora_gsm8k import recipe as lora

recipe = replace(lora, name="rslora_gsm8k", method=replace(lora.method, rslora=True))

"""rsLoRA: the LoRA recipe scaled by alpha/sqrt(r) instead of alpha/r."""

from dataclasses import replace

from lora_sst2 import recipe as lora

recipe = replace(lora, name="rslora_sst2", method=replace(lora.method, rslora=True))

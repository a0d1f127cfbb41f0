"""EVA: the LoRA recipe with A started from the principal directions of the adapted layers' inputs on the first 8
training batches (B at zero: training starts at the base)."""

from dataclasses import replace

from lora_sst2 import recipe as lora

recipe = replace(lora, name="eva_sst2", method=replace(lora.method, init="eva"))

"""LoftQ: the QLoRA recipe (4-bit NF4 base) with adapters started so that 4-bit base + B A is close to the original
full-precision weights (peft replace_lora_weights_loftq, read from the model folder's safetensors)."""

from dataclasses import replace

from qlora_sst2 import recipe as qlora

recipe = replace(qlora, name="loftq_sst2", method=replace(qlora.method, init="loftq"))

"""PiSSA: the LoRA recipe with adapters started from the base weights' principal singular directions (peft
init_lora_weights="pissa", exact SVD), taken out of the base; saved as a plain LoRA of the original base."""

from dataclasses import replace

from lora_sst2 import recipe as lora

recipe = replace(lora, name="pissa_sst2", method=replace(lora.method, init="pissa"))

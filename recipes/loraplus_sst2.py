"""LoRA+: the LoRA recipe with the B matrices at 16 times the learning rate (the paper's ratio); the A matrices,
LayerNorms and head at the recipe's rate (peft create_loraplus_optimizer)."""

from dataclasses import replace

from lora_sst2 import recipe as lora

recipe = replace(lora, name="loraplus_sst2", method=replace(lora.method, loraplus_ratio=16))

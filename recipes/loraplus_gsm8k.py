"""LoRA+ on GSM8K: the LoRA recipe with B trained at 16 times A's learning rate (peft create_loraplus_optimizer)."""

from dataclasses import replace

from lora_gsm8k import recipe as lora

recipe = replace(lora, name="loraplus_gsm8k", method=replace(lora.method, loraplus_ratio=16))

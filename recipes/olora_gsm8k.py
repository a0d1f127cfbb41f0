"""OLoRA on GSM8K: the LoRA recipe with A and B started from a QR decomposition of each weight, taken out of the base;
saved as a plain LoRA of the original base."""

from dataclasses import replace

from lora_gsm8k import recipe as lora

recipe = replace(lora, name="olora_gsm8k", method=replace(lora.method, init="olora"))

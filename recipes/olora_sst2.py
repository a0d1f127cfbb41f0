"""OLoRA: the LoRA recipe with adapters started from a QR decomposition of the base weights, taken out of the base;
saved as a plain LoRA of the original base."""

from dataclasses import replace

from lora_sst2 import recipe as lora

recipe = replace(lora, name="olora_sst2", method=replace(lora.method, init="olora"))

"""LoRA on an 8-bit (LLM.int8) base: the LoRA recipe with the base weights in int8."""

from dataclasses import replace

from peftlab import Quant8bit
from lora_sst2 import recipe as lora

recipe = replace(lora, name="lora8bit_sst2", quant=Quant8bit())

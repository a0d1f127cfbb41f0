"""QLoRA on STS-B: the LoRA recipe on a 4-bit NF4 base with double quantization (the head stays full precision)."""

from dataclasses import replace

from peftlab import Quant4bit
from lora_stsb import recipe as lora

recipe = replace(lora, name="qlora_stsb", quant=Quant4bit(type="nf4", double_quant=True, compute_dtype="float32"))

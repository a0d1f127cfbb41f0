"""QLoRA on WNUT-17: the LoRA recipe on a 4-bit NF4 base with double quantization (the head stays full precision),
at LoRA's lr 6e-4, which reports/compare_wnut17.md also chose for QLoRA on the selection split."""

from dataclasses import replace

from peftlab import Quant4bit
from lora_wnut17 import recipe as lora

recipe = replace(lora, name="qlora_wnut17", quant=Quant4bit(type="nf4", double_quant=True, compute_dtype="float32"))

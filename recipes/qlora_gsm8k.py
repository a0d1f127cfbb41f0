"""QLoRA: the LoRA recipe on a 4-bit NF4 base with double quantization (lm_head and the tied embeddings stay in
full precision)."""

from dataclasses import replace

from peftlab import Quant4bit
from lora_gsm8k import recipe as lora

recipe = replace(lora, name="qlora_gsm8k", quant=Quant4bit(type="nf4", double_quant=True, compute_dtype="float32"))

"""PiSSA on GSM8K: the LoRA recipe with A and B started from the principal singular vectors of each weight (peft's
init_lora_weights="pissa"), taken out of the base; saved as a plain LoRA of the original base."""

from dataclasses import replace

from lora_gsm8k import recipe as lora

recipe = replace(lora, name="pissa_gsm8k", method=replace(lora.method, init="pissa"))

"""LoftQ on GSM8K: the QLoRA recipe with A and B started from the best rank-r fix of the 4-bit quantization error
(peft's replace_lora_weights_loftq), so training starts closer to the full-precision model than plain QLoRA."""

from dataclasses import replace

from qlora_gsm8k import recipe as qlora

recipe = replace(qlora, name="loftq_gsm8k", method=replace(qlora.method, init="loftq"))

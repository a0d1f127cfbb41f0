"""CorDA (instruction-previewed mode): the LoRA recipe with adapters started from the base weights decomposed along
the covariance of their inputs on the first 8 training batches, taken out of the base; saved as a plain LoRA of the
original base."""

from dataclasses import replace

from lora_sst2 import recipe as lora

recipe = replace(lora, name="corda_sst2", method=replace(lora.method, init="corda"))

"""CorDA (instruction-previewed mode): the LoRA recipe with adapters started from the base weights decomposed along
the covariance of their inputs on the first 8 training batches, taken out of the base; saved as a plain LoRA of the
original base. Every linear layer of the encoder as lora_sst2, but not BERT's pooler: peft 0.21's CorDA hooks take
one sequence per layer input and the pooler sees one vector per example (README, LoRA's initialisations)."""

from dataclasses import replace

from lora_sst2 import recipe as lora

ENCODER_LINEAR = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
recipe = replace(lora, name="corda_sst2", method=replace(lora.method, init="corda", target=ENCODER_LINEAR))

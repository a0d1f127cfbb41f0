"""LoRA on every linear layer of SmolLM2-135M-Instruct (not lm_head, which stays frozen), GSM8K.
All linear layers rather than q,v only: the QLoRA paper found q,v-only LoRA short of full fine-tuning. No LoRA
dropout (peft's default): on a CPU, drawing a random mask over every adapted layer's input is a sizeable share of a
training step (the causal-LM bench's lora_dropout setting measures it), and a short run on few problems is far from
overfitting."""

from dataclasses import replace

from peftlab import LoRA
from gsm8k_base import recipe as base

recipe = replace(base, name="lora_gsm8k", method=LoRA(r=16, alpha=32, dropout=0.0, target="all-linear"),
                 train=replace(base.train, lr=5e-4))

"""VeRA on every linear layer of SmolLM2-135M-Instruct, GSM8K: frozen random matrices shared by all layers, trained
scaling vectors only; its few vectors want about 10 times LoRA's learning rate."""

from dataclasses import replace

from peftlab import VeRA
from gsm8k_base import recipe as base

recipe = replace(base, name="vera_gsm8k", method=VeRA(r=256, target="all-linear"), train=replace(base.train, lr=5e-3))

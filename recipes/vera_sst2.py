"""VeRA on the SST-2 base: every linear layer of the encoder, as recipes/lora_sst2.py, rank 256 shared random
matrices; its few trained vectors want about 10 times LoRA's learning rate."""

from dataclasses import replace

from peftlab import VeRA
from sst2_base import recipe as base

recipe = replace(base, name="vera_sst2", method=VeRA(r=256, target="all-linear"), train=replace(base.train, lr=2e-2))

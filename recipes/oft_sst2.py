"""OFT on the SST-2 base: every linear layer of the encoder, as recipes/lora_sst2.py, rotated by blocks of 32."""

from dataclasses import replace

from peftlab import OFT
from sst2_base import recipe as base

recipe = replace(base, name="oft_sst2", method=OFT(block_size=32, target="all-linear"), train=replace(base.train, lr=2e-3))

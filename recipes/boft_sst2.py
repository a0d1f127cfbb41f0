"""BOFT on the SST-2 base: every linear layer of the encoder, as recipes/lora_sst2.py, butterfly rotations of
blocks of 8, 2 factors deep (on CPU peft's PyTorch path: its CUDA kernel is not built)."""

from dataclasses import replace

from peftlab import BOFT
from sst2_base import recipe as base

recipe = replace(base, name="boft_sst2", method=BOFT(block_size=8, butterfly_factors=2, target="all-linear"),
                 train=replace(base.train, lr=2e-3))

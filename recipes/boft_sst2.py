"""BOFT on the SST-2 base: every linear layer of the encoder, as recipes/lora_sst2.py, rotations of blocks of 8. One
butterfly factor: without a GPU peft has no kernel for more (methods/oft.py says why); on a GPU with nvcc and ninja
`--set method.butterfly_factors=2` is the paper's butterfly."""

from dataclasses import replace

from peftlab import BOFT
from sst2_base import recipe as base

recipe = replace(base, name="boft_sst2", method=BOFT(block_size=8, butterfly_factors=1, target="all-linear"),
                 train=replace(base.train, lr=2e-3))

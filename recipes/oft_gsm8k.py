"""OFT on every linear layer of SmolLM2-135M-Instruct, GSM8K: block-diagonal orthogonal rotations of each weight's
inputs, blocks of 32 (they divide 576 and 1536)."""

from dataclasses import replace

from peftlab import OFT
from gsm8k_base import recipe as base

recipe = replace(base, name="oft_gsm8k", method=OFT(block_size=32, target="all-linear"), train=replace(base.train, lr=5e-4))

"""BOFT on every linear layer of SmolLM2-135M-Instruct, GSM8K: orthogonal blocks of 8 with one butterfly factor
(without a GPU peft has no kernel for more; methods/oft.py says why)."""

from dataclasses import replace

from peftlab import BOFT
from gsm8k_base import recipe as base

recipe = replace(base, name="boft_gsm8k", method=BOFT(block_size=8, butterfly_factors=1, target="all-linear"),
                 train=replace(base.train, lr=5e-4))

"""A Pfeiffer bottleneck adapter after every feed-forward block (mlp.down_proj) of SmolLM2-135M-Instruct, GSM8K."""

from dataclasses import replace

from peftlab import Pfeiffer
from gsm8k_base import recipe as base

recipe = replace(base, name="pfeiffer_gsm8k", method=Pfeiffer(reduction_factor=16),
                 train=replace(base.train, lr=1e-3))

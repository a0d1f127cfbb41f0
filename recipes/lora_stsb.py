"""LoRA on the STS-B base: rank 8 on every linear layer of the encoder; the regression head trains fully.
lr 1e-3 without LoRA dropout (as lora_sst2): Pearson 0.843 on the tuning subset (see stsb_base)."""

from dataclasses import replace

from peftlab import LoRA
from stsb_base import recipe as base

recipe = replace(base, name="lora_stsb", method=LoRA(r=8, alpha=16, dropout=0.0, target="all-linear"),
                 train=replace(base.train, lr=1e-3))

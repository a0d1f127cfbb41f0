"""LoRA on the STS-B base: rank 8 on every linear layer of the encoder; the regression head trains fully.
Same setting and learning rate as lora_sst2 (all-linear beat query/value there)."""

from dataclasses import replace

from peftlab import LoRA
from stsb_base import recipe as base

recipe = replace(base, name="lora_stsb", method=LoRA(r=8, alpha=16, dropout=0.1, target="all-linear"),
                 train=replace(base.train, lr=2e-3))

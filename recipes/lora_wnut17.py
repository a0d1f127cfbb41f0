"""LoRA on the WNUT-17 base: rank 8 on every linear layer of the encoder; the token-classification head trains
fully. lr 1e-3 without LoRA dropout, as tuned on STS-B (lora_stsb)."""

from dataclasses import replace

from peftlab import LoRA
from wnut17_base import recipe as base

recipe = replace(base, name="lora_wnut17", method=LoRA(r=8, alpha=16, dropout=0.0, target="all-linear"),
                 train=replace(base.train, lr=1e-3))

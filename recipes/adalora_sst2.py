"""AdaLoRA on the SST-2 base: every linear layer of the encoder, as recipes/lora_sst2.py, rank 12 pruned to an
average of 8 (LoRA's rank) over the run."""

from dataclasses import replace

from peftlab import AdaLoRA
from sst2_base import recipe as base

recipe = replace(base, name="adalora_sst2", method=AdaLoRA(init_r=12, target_r=8, alpha=16, target="all-linear"),
                 train=replace(base.train, lr=2e-3))

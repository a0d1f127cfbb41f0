"""AdaLoRA on every linear layer of SmolLM2-135M-Instruct, GSM8K: LoRA in SVD form whose rank budget is pruned from
24 to an average of 16 (LoRA's rank) over the run."""

from dataclasses import replace

from peftlab import AdaLoRA
from gsm8k_base import recipe as base

recipe = replace(base, name="adalora_gsm8k", method=AdaLoRA(init_r=24, target_r=16, alpha=32, target="all-linear"),
                 train=replace(base.train, lr=5e-4))

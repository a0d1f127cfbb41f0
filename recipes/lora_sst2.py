"""LoRA on the SST-2 base: rank 8 on every linear layer of the encoder (not the head, which trains fully).

On 4,000 SST-2 sentences, all-linear reached 80.6 % vs 79.0 % for query/value only at lr 2e-3, and
lr 2e-3 beat 5e-4 (79.0 % vs 75.2 %); rank 16 or batch 16 changed little (8,000 sentences: 83.9-84.6 %).
"""

from dataclasses import replace

from peftlab import LoRA
from sst2_base import recipe as base

recipe = replace(base, name="lora_sst2", method=LoRA(r=8, alpha=16, dropout=0.0, target="all-linear"),
                 train=replace(base.train, lr=2e-3))

"""LoRA on the SST-2 base: rank 8 on every linear layer of the encoder (not the head, which trains fully), the 13
LayerNorms trained beside it (modules_to_save), batch 32 at lr 2e-3. These settings were picked in early sessions by
comparing on the validation split, before peftlab carved a selection split out of train; reports/lora_sst2.md and
reports/compare_sst2.md hold what they measure now.
"""

from dataclasses import replace

from peftlab import LoRA
from sst2_base import recipe as base

recipe = replace(base, name="lora_sst2",
                 method=LoRA(r=8, alpha=16, dropout=0.0, target="all-linear", modules_to_save=["LayerNorm"]),
                 train=replace(base.train, batch_size=32, lr=2e-3))

"""LoRA on the SQuAD base: rank 8 on every linear layer of the encoder; the span head (qa_outputs) trains fully.
Same setting and learning rate as lora_sst2."""

from dataclasses import replace

from peftlab import LoRA
from squad_base import recipe as base

recipe = replace(base, name="lora_squad", method=LoRA(r=8, alpha=16, dropout=0.1, target="all-linear"),
                 train=replace(base.train, lr=2e-3))

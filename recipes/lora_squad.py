"""LoRA on the SQuAD base: rank 8 on every linear layer of the encoder; the span head (qa_outputs) trains fully.
lr 1e-3 without LoRA dropout, as tuned on STS-B (lora_stsb)."""

from dataclasses import replace

from peftlab import LoRA
from squad_base import recipe as base

recipe = replace(base, name="lora_squad", method=LoRA(r=8, alpha=16, dropout=0.0, target="all-linear"),
                 train=replace(base.train, lr=1e-3))

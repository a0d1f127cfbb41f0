"""Full fine-tuning on the SQuAD base: the baseline every PEFT method is compared with.
lr 2e-4, as tuned on STS-B for a short schedule (full_stsb)."""

from dataclasses import replace

from peftlab import FullFineTuning
from squad_base import recipe as base

recipe = replace(base, name="full_squad", method=FullFineTuning(), train=replace(base.train, lr=2e-4))

"""Full fine-tuning on the SQuAD base: the baseline every PEFT method is compared with."""

from dataclasses import replace

from peftlab import FullFineTuning
from squad_base import recipe as base

recipe = replace(base, name="full_squad", method=FullFineTuning(),
                 train=replace(base.train, lr=5e-5))  # all weights move: the usual full fine-tuning rate

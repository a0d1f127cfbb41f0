"""Full fine-tuning on the WNUT-17 base: the baseline every PEFT method is compared with."""

from dataclasses import replace

from peftlab import FullFineTuning
from wnut17_base import recipe as base

recipe = replace(base, name="full_wnut17", method=FullFineTuning(),
                 train=replace(base.train, lr=5e-5))  # all weights move: the usual full fine-tuning rate

"""Full fine-tuning on the SST-2 base: the baseline every PEFT method is compared with."""

from dataclasses import replace

from peftlab import FullFineTuning
from sst2_base import recipe as base

recipe = replace(base, name="full_sst2", method=FullFineTuning(),
                 train=replace(base.train, lr=5e-5))  # all weights move: the usual full fine-tuning rate

"""Full fine-tuning on the WNUT-17 base: the baseline every PEFT method is compared with.
lr 2e-4, as tuned on STS-B for the same short schedule (full_stsb)."""

from dataclasses import replace

from peftlab import FullFineTuning
from wnut17_base import recipe as base

recipe = replace(base, name="full_wnut17", method=FullFineTuning(), train=replace(base.train, lr=2e-4))

"""Full fine-tuning on the WNUT-17 base: the baseline every PEFT method is compared with.
lr 1e-4: the rate reports/compare_wnut17.md chose for it on the selection split (held out of train)."""

from dataclasses import replace

from peftlab import FullFineTuning
from wnut17_base import recipe as base

recipe = replace(base, name="full_wnut17", method=FullFineTuning(), train=replace(base.train, lr=1e-4))

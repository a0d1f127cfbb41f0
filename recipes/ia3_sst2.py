"""IA3 on the SST-2 base: peft's default targets for BERT (key, value, feed-forward output)."""

from dataclasses import replace

from peftlab import IA3
from sst2_base import recipe as base

recipe = replace(base, name="ia3_sst2", method=IA3(), train=replace(base.train, lr=1e-2))

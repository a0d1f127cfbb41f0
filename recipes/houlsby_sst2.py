"""Houlsby bottleneck adapters (after attention and after the feed-forward block) on the SST-2 base."""

from dataclasses import replace

from peftlab import Houlsby
from sst2_base import recipe as base

recipe = replace(base, name="houlsby_sst2", method=Houlsby(reduction_factor=16, non_linearity="relu"),
                 train=replace(base.train, lr=1e-3))

"""Pfeiffer bottleneck adapters (after the feed-forward block only) on the SST-2 base."""

from dataclasses import replace

from peftlab import Pfeiffer
from sst2_base import recipe as base

recipe = replace(base, name="pfeiffer_sst2", method=Pfeiffer(reduction_factor=16, non_linearity="relu"),
                 train=replace(base.train, lr=1e-3))

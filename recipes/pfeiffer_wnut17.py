"""Pfeiffer bottleneck adapters (after the feed-forward block) on the WNUT-17 base."""

from dataclasses import replace

from peftlab import Pfeiffer
from wnut17_base import recipe as base

recipe = replace(base, name="pfeiffer_wnut17", method=Pfeiffer(reduction_factor=16, non_linearity="relu"),
                 train=replace(base.train, lr=1e-3))

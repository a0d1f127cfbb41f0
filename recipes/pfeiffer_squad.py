"""Pfeiffer bottleneck adapters (after the feed-forward block) on the SQuAD base."""

from dataclasses import replace

from peftlab import Pfeiffer
from squad_base import recipe as base

recipe = replace(base, name="pfeiffer_squad", method=Pfeiffer(reduction_factor=16, non_linearity="relu"),
                 train=replace(base.train, lr=1e-3))

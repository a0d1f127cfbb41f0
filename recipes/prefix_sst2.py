"""Prefix tuning on the SST-2 base: 20 virtual key/value tokens per layer, no reparameterisation MLP."""

from dataclasses import replace

from peftlab import PrefixTuning
from sst2_base import recipe as base

recipe = replace(base, name="prefix_sst2", method=PrefixTuning(num_virtual_tokens=20, projection=False),
                 train=replace(base.train, lr=1e-2))

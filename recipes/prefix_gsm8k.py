"""Prefix tuning on SmolLM2-135M-Instruct, GSM8K: 20 trained key/value prefixes per layer (generation goes through
the key-value cache; tests/test_causal_lm.py checks batched generation against one-by-one)."""

from dataclasses import replace

from peftlab import PrefixTuning
from gsm8k_base import recipe as base

recipe = replace(base, name="prefix_gsm8k", method=PrefixTuning(num_virtual_tokens=20),
                 train=replace(base.train, lr=1e-2))

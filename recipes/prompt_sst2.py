"""Prompt tuning on the SST-2 base: 20 soft-prompt embeddings initialised from a task description."""

from dataclasses import replace

from peftlab import PromptTuning
from sst2_base import recipe as base

recipe = replace(base, name="prompt_sst2",
                 method=PromptTuning(num_virtual_tokens=20, init_text="classify the sentiment of this movie review"),
                 train=replace(base.train, lr=3e-2))

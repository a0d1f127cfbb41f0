"""Full fine-tuning of SmolLM2-135M-Instruct on GSM8K: the baseline of compare_gsm8k."""

from dataclasses import replace

from gsm8k_base import recipe as base

recipe = replace(base, name="full_gsm8k")

"""STUB until branch `memlevers` lands (the coordinator merges its levers.py over this one): the memory levers a
recipe resolves to, as the plan reads them."""

from __future__ import annotations

LOSS_CHUNK_TOKENS = 1024  # tokens per chunk of the label-only cross-entropy


def gradient_checkpointing(recipe) -> bool:
    value = getattr(recipe.train, "gradient_checkpointing", False)
    return bool(value) if value != "auto" else False


def micro_batch_size(recipe) -> int:
    return getattr(recipe.train, "micro_batch_size", None) or recipe.train.batch_size


def chunked_loss(recipe) -> bool:
    """The causal LM's label-only chunked cross-entropy is on."""
    return False

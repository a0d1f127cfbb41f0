"""Speed settings of peftlab's training path, each measured on and off in reports/bench_throughput.md
(`python -m peftlab.bench RECIPE --ablation`):

- length_buckets: batches of examples of equal length (LengthBucketSampler) instead of Trainer's length grouping;
- bf16: with train.precision="auto", bf16 autocast on a CPU that computes bf16 natively (AVX512-BF16 / AMX);
- fp32_attention: under CPU bf16 autocast, attention still runs in float32 (torch's CPU flash-attention backward
  is several times slower in bf16 than in float32, which ate the bf16 gain of the matmuls);
- fused_adamw: torch's fused AdamW kernel (Trainer's default since torch 2.8);
- eval_by_length: evaluation examples in order of length, so that evaluation batches pad little;
- merged_generation: a causal LM's peft adapter is folded into the base weights while it generates
  (tasks/causal_lm.adapter_merged; measured in reports/bench_causal_lm.md).

PEFTLAB_DISABLE=name[,name...] switches them off one by one, for measuring (also the memory levers "allocator"
and "labelled_logits", peftlab/levers.py); the settings a run used are recorded in its environment.json.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import check

DISABLE_ENV = "PEFTLAB_DISABLE"
SWITCHES = ("length_buckets", "bf16", "fp32_attention", "fused_adamw", "eval_by_length", "merged_generation")
# memory levers without a recipe field (peftlab/levers.py), switched off the same way for measuring
LEVER_SWITCHES = ("allocator", "labelled_logits", "onednn_cache")
FP32_ATTENTION = "peftlab_sdpa_fp32"


def disabled() -> list[str]:
    names = [n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()]
    known = SWITCHES + LEVER_SWITCHES
    unknown = [n for n in names if n not in known]
    check(not unknown, f"${DISABLE_ENV}: unknown switch {', '.join(unknown)}; use any of {', '.join(known)}")
    return names


def enabled(name: str) -> bool:
    return name not in disabled()


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in the CPU flags: bf16 matmuls run in hardware (else they are emulated, slowly)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def on_cpu(recipe) -> bool:
    """Where the run trains (train.device, as training.training_arguments maps it)."""
    return recipe.train.device == "cpu" or not torch.cuda.is_available()


def bf16_supported(recipe) -> bool:
    return cpu_has_native_bf16() if on_cpu(recipe) else torch.cuda.is_bf16_supported()


def use_bf16(recipe) -> bool:
    """bf16 autocast for this recipe: "auto" picks it on a CPU with native bf16, for full-precision bases only
    (a quantized base computes in quant.compute_dtype); on a GPU "auto" keeps float32 (set "bf16" there)."""
    precision = recipe.train.precision
    if precision == "bf16":
        check(bf16_supported(recipe), "train.precision='bf16': this machine has no native bf16 (a CPU with "
                                      "avx512_bf16 or amx_bf16, or a GPU with bf16); use 'auto' or 'fp32'")
        return True
    return (precision == "auto" and recipe.quant is None and on_cpu(recipe)
            and enabled("bf16") and cpu_has_native_bf16())


def optimizer_name() -> str:
    return "adamw_torch_fused" if enabled("fused_adamw") else "adamw_torch"


def settings(recipe) -> dict:
    """What a run used, for its environment record."""
    bf16 = use_bf16(recipe)
    return {"precision": "bf16 autocast" if bf16 else "fp32",
            "attention": "sdpa, float32 under autocast" if bf16 and fp32_attention_applies(recipe) else "model default",
            "batches": "length buckets" if recipe.train.group_by_length and enabled("length_buckets")
            else "Trainer length grouping" if recipe.train.group_by_length else "random",
            "optimizer": optimizer_name(), "torch_threads": torch.get_num_threads(), "disabled": disabled()}


# ------------------------------------------------------------------------------------------------ batches

class LengthBucketSampler(torch.utils.data.Sampler):
    """An index order whose consecutive runs of `batch_size` are examples of equal (or next to equal) length, the
    batches in random order. Shuffle, sort by length (stable: ties stay shuffled), cut into batches, shuffle the
    batches; a last short batch stays last so that every batch boundary holds.

    Trainer's LengthGroupedSampler sorts only inside mega-batches of 50 batches. Measured on SST-2 at batch 16: on
    4,000 sentences it pads 4.0 % of the tokens and 48 % of its batches need no padding, here 0.9 % and 84 %; on
    all 67,349, 4.2 % / 48 % against 0.1 % / 99 %. A batch without padding runs attention without a mask
    (transformers drops an all-ones mask). `batch_size` is the global batch: with several processes each takes a
    consecutive share of every batch, so a global batch holds the same examples as in one process. Exactly: every
    step but one, the last of an epoch whose example count does not divide by `batch_size`; there one process
    trains the short batch of the r left-over examples, while accelerate (even_batches) fills it up to a whole
    batch with the first batch_size - r examples of the epoch's order (tests/test_speed.py checks this rule)."""

    def __init__(self, lengths, batch_size: int, seed: int):
        self.lengths = torch.as_tensor(list(lengths))
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Trainer/accelerate call this: a new order every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator)
        order = order[torch.sort(self.lengths[order], stable=True).indices]
        batches = list(order.split(self.batch_size))
        short = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator)] + short
        return iter(torch.cat(shuffled).tolist())


def evaluation_order(features):
    """The prepared evaluation set sorted by length (stable), so that each evaluation batch pads to little more
    than its own examples (in file order, a batch of 128 SST-2 sentences pads to its longest). The scores do not
    depend on the order; extractive QA's span decoding needs its features in the order they are evaluated, and
    tasks/qa.py already sorts them by length, so there this is the identity."""
    if not enabled("eval_by_length") or "length" not in features.column_names:
        return features
    return features.sort("length")


# ---------------------------------------------------------------------------------------------- attention

def fp32_attention_applies(recipe) -> bool:
    return enabled("fp32_attention") and on_cpu(recipe)


def _sdpa_fp32(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with torch.autocast(query.device.type, enabled=False):
        return sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)


def keep_attention_fp32(model) -> bool:
    """Switch a model that uses SDPA to the same SDPA in float32 (transformers' attention registry); True if done.
    Under autocast the projections before and after attention stay bf16."""
    from transformers import AttentionInterface, PreTrainedModel
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, PreTrainedModel) or base.config._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(FP32_ATTENTION, _sdpa_fp32)
    AttentionMaskInterface.register(FP32_ATTENTION, sdpa_mask)  # the same masks as SDPA
    base.set_attn_implementation(FP32_ATTENTION)
    return True

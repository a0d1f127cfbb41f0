"""Peak-memory prediction before a run, from what is known ahead.

The model is built on the meta device (no weights are read, no memory is used) and wrapped with the
recipe's method, which gives exact parameter counts per dtype and trainability. Then:

  peak = runtime + weights + gradients + optimizer state + activations
  runtime      resident memory of this process before the model is loaded (CPU only: Python, libraries,
               tokenized data); on a GPU the prediction is of torch's allocated device memory, without it
  weights      each parameter at its storage size: 4 bytes (float32), quantized linear layers at their
               real bits/param (NF4 + double quantization 4.127, without 4.5, int8 8 + 32/d_in)
  gradients    4 bytes per trainable parameter; AdamW keeps two more float32 moments: 8 bytes each
  activations  kept for the backward pass, per layer for the longest batch (see `activation_bytes`)
"""

from __future__ import annotations

import argparse
import re
import resource
import sys

import torch

from .measure import human_bytes

# Per-layer float32 activation words per token, in units of hidden size h and intermediate size i:
# q/k/v/attention inputs and outputs, layer norms, dropout masks, residuals (~16 h) plus the feed-forward
# up-projection and its activation (2 i). Attention scores, when kept, add `heads * seq` words per token.
HIDDEN_WORDS, INTERMEDIATE_WORDS, SCORE_WORDS = 16, 2, 2.5
# glibc keeps freed blocks and torch workspaces round up allocations; measured on the SST-2 runs
# (see reports/compare_sst2.md) the resident peak sits this much above the sum of live tensors.
ALLOCATOR_OVERHEAD = 1.0


def current_rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _quantized_bits(quant, d_in: int) -> float:
    if quant.kind == "8bit":
        return 8 + 32 / d_in
    return 4 + 8 / 64 + 32 / (64 * 256) if quant.double_quant else 4 + 32 / 64


def parameter_bytes(model, quant, heads: tuple[str, ...]) -> tuple[int, int, int]:
    """(bytes of all weights as stored, trainable parameter count, total parameter count)."""
    weight_bytes = trainable = total = 0
    quantized = set()
    if quant is not None:  # bitsandbytes replaces every nn.Linear except the task heads
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and not any(h in name.split(".") for h in heads) \
                    and not re.search(r"(lora_|modules_to_save|prompt_encoder|adapter)", name):
                quantized.add(id(module.weight))
                weight_bytes += module.weight.numel() * _quantized_bits(quant, module.in_features) / 8
    for param in model.parameters():
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
        if id(param) not in quantized:
            weight_bytes += param.numel() * 4  # float32 (prepare_model_for_kbit_training upcasts the rest)
    return int(weight_bytes), trainable, total


def activation_bytes(config, batch: int, seq: int, task: str, sdpa: bool) -> int:
    """float32 activations stored for backward for one batch of `batch` x `seq` tokens."""
    h = config.hidden_size
    i = getattr(config, "intermediate_size", 4 * h)
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    per_token = HIDDEN_WORDS * h + INTERMEDIATE_WORDS * i + (0 if sdpa else SCORE_WORDS * heads * seq)
    words = layers * batch * seq * per_token + 4 * batch * seq * h  # + embeddings and output
    if task == "causal_lm":  # logits, their log-softmax and its gradient over the vocabulary
        words += 3 * batch * seq * config.vocab_size
    return int(4 * words)


def predict(recipe, task, resolved, label_names: list[str], longest: int) -> dict:
    """Predicted peak memory of training `recipe`; `longest` is the longest tokenized training example."""
    from transformers import AutoConfig

    from .methods.base import Context

    config = AutoConfig.from_pretrained(resolved.path, trust_remote_code=recipe.model.trust_remote_code,
                                        **task.model_kwargs(label_names))
    with torch.device("meta"):
        model = task.MODEL_CLASS.from_config(config)
        heads = tuple(h for h in task.HEADS if hasattr(model, h))
        model = recipe.method.wrap(model, Context(heads, task.PEFT_TASK_TYPE, recipe.quant is not None, resolved.path))
    weights, trainable, total = parameter_bytes(model, recipe.quant, heads)
    on_gpu = torch.cuda.is_available()
    sdpa = getattr(config, "_attn_implementation", "sdpa") in ("sdpa", "flash_attention_2")
    parts = {
        "runtime": 0 if on_gpu else current_rss(),
        "weights": weights,
        "gradients": 4 * trainable,
        "optimizer": 8 * trainable,
        "activations": activation_bytes(config, recipe.train.batch_size, min(longest, recipe.data.max_length),
                                        recipe.model.task, sdpa),
    }
    peak = int(sum(parts.values()) * ALLOCATOR_OVERHEAD)
    return {"predicted_peak_bytes": peak, "parts": parts, "device": "cuda" if on_gpu else "cpu",
            "trainable_params": trainable, "total_params": total}


def verdict(prediction: dict, budget: int | None) -> tuple[bool, int, str]:
    """Does the prediction fit the budget, else the GPU's memory, else this machine's physical memory?"""
    if budget is not None:
        limit, what = budget, "the budget"
    elif prediction["device"] == "cuda":
        limit, what = torch.cuda.get_device_properties(0).total_memory, "GPU memory"
    else:
        import os

        limit, what = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory"
    return prediction["predicted_peak_bytes"] <= limit, limit, what


def parse_size(text: str) -> int:
    """'16GiB', '512MiB', '8GB', '1e9' -> bytes (binary units either way, as memory is sold)."""
    match = re.fullmatch(r"\s*([\d.e+]+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"--budget {text!r}: use a size like 16GiB, 512MiB or 8GB")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " "))


def print_plan(prediction: dict, budget: int | None, out=sys.stdout) -> bool:
    fits, limit, what = verdict(prediction, budget)
    print(f"predicted peak memory ({prediction['device']}): {human_bytes(prediction['predicted_peak_bytes'])}", file=out)
    for name, value in prediction["parts"].items():
        print(f"  {name:<12} {human_bytes(value)}", file=out)
    print(f"trainable parameters: {prediction['trainable_params']:,} of {prediction['total_params']:,}", file=out)
    print(f"{'fits' if fits else 'does not fit'}: {human_bytes(prediction['predicted_peak_bytes'])} vs "
          f"{what} {human_bytes(limit)}", file=out)
    return fits

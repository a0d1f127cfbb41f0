"""Peak-memory prediction before a run, from what is known ahead.

The model is built on the meta device (no weights are read, no memory is used) and wrapped with the
recipe's method, which gives exact parameter counts per dtype and trainability. Then:

  peak = runtime + weights + gradients + optimizer state + activations
  runtime      resident memory of this process before the model is loaded (CPU only: Python, libraries,
               tokenized data); on a GPU the prediction is of torch's allocated device memory, without it
  weights      each parameter at its storage size: 4 bytes (float32), quantized linear layers at their
               real bits/param (NF4 + double quantization 4.127, without 4.5, int8 8 + 32/d_in)
  gradients    4 bytes per trainable parameter; AdamW keeps two more float32 moments: 8 bytes each
  activations  kept for the backward pass, per layer for the longest batch (see `activation_bytes`), times
               a factor for allocator overhead fitted on measured runs
"""

from __future__ import annotations

import argparse
import re
import resource

import torch

from .measure import human_bytes

# float32 words kept for backward per token and layer, counted for a BERT-style block: inputs of q/k/v
# (shared), q, k, v, attention context, output projection, two dropout masks, two LayerNorm inputs, the
# feed-forward input (~14 h); the feed-forward up-projection output, its activation and its input to the
# down-projection (3 i); attention probabilities before and after dropout (2.25 words per key position
# and head, the mask as bytes).
HIDDEN_WORDS, INTERMEDIATE_WORDS, SCORE_WORDS = 14.25, 3, 2.25
# Resident memory on CPU exceeds live tensors: glibc keeps freed blocks of the varying batch shapes
# (dynamic padding) and torch's temporaries in backward come on top. This factor on activations was fitted
# on the two full-data SST-2 runs (reports/lora_sst2.json, reports/full_sst2.json); the comparison report
# shows how well it carries over to the other methods.
ACTIVATION_OVERHEAD = 1.7  # LoRA (all-linear) run: 1.88, full fine-tuning run: 1.55
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


def adapter_words(model) -> int:
    """Extra words per token that adapters keep: LoRA-style layers save their (dropped-out) input and the
    rank-r projection; bottleneck adapters their bottleneck activations."""
    words = 0
    for module in model.modules():
        if hasattr(module, "lora_A") and hasattr(module, "in_features"):
            words += module.in_features + sum(a.out_features for a in module.lora_A.values())
        elif hasattr(module, "down") and hasattr(module, "up"):  # peftlab bottleneck adapter
            words += 2 * module.down.out_features
    return words


def virtual_tokens(method) -> int:
    return getattr(method, "num_virtual_tokens", 0)


def activation_bytes(config, batch: int, seq: int, task: str, extra_words: int, virtual: int, scores_kept: bool) -> int:
    """float32 activations stored for backward for one batch of `batch` x `seq` tokens."""
    h = config.hidden_size
    i = getattr(config, "intermediate_size", 4 * h)
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    keys = seq + virtual  # prefix/prompt tokens lengthen what every query attends to
    per_token = layers * (HIDDEN_WORDS * h + INTERMEDIATE_WORDS * i + (SCORE_WORDS * heads * keys if scores_kept else 0))
    words = batch * (seq + virtual) * (per_token + extra_words + 4 * h)  # + embeddings and output
    if task == "causal_lm":  # logits, their log-softmax and its gradient over the vocabulary
        words += 3 * batch * seq * config.vocab_size
    return int(4 * words * ACTIVATION_OVERHEAD)


def predict(recipe, task, resolved, label_names: list[str], longest: int) -> dict:
    """Predicted peak memory of training `recipe`; `longest` is the longest tokenized training example."""
    from .heads import attach as attach_head
    from .methods.base import Context
    from .models import load_config

    config = load_config(resolved, recipe.model, **task.model_kwargs(label_names))
    with torch.device("meta"):
        model = task.MODEL_CLASS.from_config(config)
        if recipe.model.head is not None:
            attach_head(model, recipe.model.head, task.HEADS)
        heads = tuple(h for h in task.HEADS if hasattr(model, h))
        model = recipe.method.wrap(model, Context(heads, task.PEFT_TASK_TYPE, recipe.quant is not None, resolved.path))
    weights, trainable, total = parameter_bytes(model, recipe.quant, heads + tuple(getattr(task, "UNQUANTIZED", ())))
    on_gpu = torch.cuda.is_available()
    # with dropout on attention probabilities SDPA takes the math path and keeps them; without, it keeps none
    scores_kept = getattr(config, "attention_probs_dropout_prob", 0.0) > 0
    parts = {
        "runtime": 0 if on_gpu else current_rss(),
        "weights": weights,
        "gradients": 4 * trainable,
        "optimizer": 8 * trainable,
        "activations": activation_bytes(config, recipe.train.batch_size, min(longest, recipe.data.max_length),
                                        recipe.model.task, adapter_words(model), virtual_tokens(recipe.method), scores_kept),
    }
    peak = sum(parts.values())
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


def print_plan(prediction: dict, budget: int | None) -> bool:
    fits, limit, what = verdict(prediction, budget)
    print(f"predicted peak memory ({prediction['device']}): {human_bytes(prediction['predicted_peak_bytes'])}")
    for name, value in prediction["parts"].items():
        print(f"  {name:<12} {human_bytes(value)}")
    print(f"trainable parameters: {prediction['trainable_params']:,} of {prediction['total_params']:,}")
    print(f"{'fits' if fits else 'does not fit'}: {human_bytes(prediction['predicted_peak_bytes'])} vs "
          f"{what} {human_bytes(limit)}")
    return fits

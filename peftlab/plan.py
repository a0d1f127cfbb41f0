"""The memory plan: training peak predicted before a run, from what is known ahead, one term per mechanism.

The model is built on the meta device (no weights are read) and wrapped with the recipe's method, which gives exact
parameter counts per dtype and trainability and the adapted layers. For the longest batch (micro-batch x longest
sequence) the live tensors of a training step are, in bytes:

  weights            every parameter and buffer at its stored size: float32 4 B, quantized linear layers at their
                     real bits/param (NF4 + double quantization 4.127, int8 8 + 32/d_in)
  optimizer          AdamW: two float32 moments per trainable parameter and a step count per trainable tensor
  gradients          4 B per trainable parameter (at the optimizer step, when the activations are gone)
  cast weights       under bf16 autocast each linear layer's weight is cast to bf16 and the copy kept for backward
  activations        tensors each transformer layer keeps for backward, per token (see `layer_bytes`): inputs of
                     linear layers (fp32 shared by layers reading the same tensor; under autocast one bf16 copy each),
                     normalisation inputs/outputs, attention q/k/v/output, the feed-forward intermediates; with
                     gradient checkpointing only each layer's input plus one layer's activations
  adapters           per token, what adapted linear layers add (LoRA/DoRA: dropped-out input, rank-r projection;
                     DoRA also the base output it rescales) and bottleneck adapters (down/up activations)
  dequantized        a 4/8-bit layer's weight dequantized to float32 for its matmul (the largest, one at a time)
  logits             the output layer: float32 logits over the vocabulary for every token (or only the labelled
                     ones with the label-only chunked loss), their log-softmax and its gradient

  peak = weights + optimizer + max(activations + cast weights + adapters + dequantized + logits, gradients)

On CPU the plan of resident memory adds the process before the model loads (Python, libraries, tokenized data:
measured, `runtime`) and an allocator term: glibc keeps freed blocks of earlier steps' shapes (`ALLOCATOR_SLACK`
of the activation-like terms, measured on the comparisons' runs; see benchmarks/memory_calibration.py).
"""

from __future__ import annotations

import argparse
import re
import resource

import torch

from . import levers
from .measure import human_bytes

# Resident memory beyond live tensors, as a fraction of the transient (activation-like) bytes: glibc's free lists
# keep blocks of the step's shapes after they are freed (see the module docstring and memory_calibration.py).
ALLOCATOR_SLACK = 1.0


def current_rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def runtime_rss(recipe) -> int:
    """Resident memory of this process before the model loads, with the libraries the run will load imported
    (bitsandbytes and its kernels for a quantized base: a few hundred MB)."""
    if recipe.quant is not None:
        import bitsandbytes  # noqa: F401
    return current_rss()


def _quantized_bits(quant, d_in: int) -> float:
    if quant.kind == "8bit":
        return 8 + 32 / d_in
    return 4 + 8 / 64 + 32 / (64 * 256) if quant.double_quant else 4 + 32 / 64


def _quantized_linears(model, quant, heads: tuple[str, ...]) -> list:
    """The nn.Linear layers bitsandbytes replaces: all but the task heads and the method's own layers."""
    if quant is None:
        return []
    return [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
            and not any(h in name.split(".") for h in heads)
            and not re.search(r"(lora_|modules_to_save|prompt_encoder|adapter)", name)]


def parameter_bytes(model, quant, heads: tuple[str, ...]) -> tuple[int, int, int]:
    """(bytes of all weights and buffers as stored, trainable parameter count, total parameter count)."""
    quantized = {id(m.weight): m for m in _quantized_linears(model, quant, heads)}
    weight_bytes = sum(m.weight.numel() * _quantized_bits(quant, m.in_features) / 8 for m in quantized.values())
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
        if id(param) not in quantized:
            weight_bytes += param.numel() * 4  # float32 (prepare_model_for_kbit_training upcasts the rest)
    weight_bytes += sum(b.numel() * b.element_size() for b in model.buffers())
    return int(weight_bytes), trainable, total


def _base_linears(model) -> list[tuple[str, torch.nn.Module]]:
    """The model's own linear layers (an adapted one as its base_layer), not the layers methods add."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
            and not re.search(r"(lora_|adapter|prompt_encoder|modules_to_save)", name)]


def layer_bytes(config, act: int, decoder: bool, trained_linears: bool, keys: int) -> float:
    """Bytes one transformer layer keeps for backward, per token. act: element size of matmul outputs (2 under bf16
    autocast, else 4); normalisation, attention and the residual stream stay float32. A frozen linear layer keeps
    nothing of its input (its weight gradient is not needed); a trained one keeps its input (under autocast its own
    bf16 copy of it)."""
    h = config.hidden_size
    i = getattr(config, "intermediate_size", 4 * h)
    heads = config.num_attention_heads
    # attention (SDPA's math path on CPU, float32): scaled queries and keys, values, probabilities over every key
    attention = 3 * h * 4 + heads * keys * 4
    if decoder:  # Llama: two RMSNorms (input and normalised output), gated SiLU feed-forward
        kept = attention + 2 * 2 * h * 4 + 3 * i * act  # gate (SiLU input), SiLU output, up
        inputs = (3 * h if act == 2 else h) + h + (2 * h if act == 2 else h) + i  # q/k/v, o, gate/up, down
    else:  # BERT: two LayerNorm inputs, GELU input
        kept = attention + 2 * h * 4 + i * act
        inputs = (3 * h if act == 2 else h) + h + h + i  # q/k/v, attention output, intermediate, output
    return kept + (inputs * act if trained_linears else 0)


def adapter_bytes(model, act: int, dropout: float) -> float:
    """Per token: what adapted linear layers and bottleneck adapters keep for backward."""
    total, shared = 0.0, set()
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "in_features"):
            r = sum(a.out_features for a in module.lora_A.values())
            d_in, d_out = module.in_features, module.out_features
            # lora_A's input: its dropped-out copy and mask; else under autocast its own bf16 copy; else the
            # float32 input itself, once for the layers reading the same tensor (q/k/v, gate/up: one parent)
            if dropout:
                total += d_in * 4 + d_in + (d_in * act if act == 2 else 0)
            elif act == 2:
                total += d_in * act
            elif (name.rsplit(".", 1)[0], d_in) not in shared:
                shared.add((name.rsplit(".", 1)[0], d_in))
                total += d_in * 4
            total += r * act  # lora_B's input
            if module.lora_magnitude_vector:  # DoRA: the base output it rescales and its own result
                total += 2 * d_out * act + (d_in * act if dropout else 0)
        elif hasattr(module, "ia3_l"):  # IA3: the scaled tensor (layer output, or a feed-forward input)
            total += (module.in_features if module.is_feedforward else module.out_features) * act
        elif hasattr(module, "down") and hasattr(module, "up"):  # peftlab bottleneck adapter
            total += 3 * module.down.out_features * 4 + module.down.in_features * 4
    return total


def logits_bytes(config, task: str, tokens: int, labelled: int, chunked: bool) -> int:
    """The output layer's share: float32 logits, their log-softmax and its gradient, for the causal LM's tokens."""
    if task != "causal_lm":
        return 0
    if chunked:  # label-only chunked cross-entropy: one chunk of the labelled tokens at a time
        return 3 * 4 * min(labelled, levers.LOSS_CHUNK_TOKENS) * config.vocab_size + 4 * labelled * config.hidden_size
    return 4 * 4 * tokens * config.vocab_size  # logits, float copy, log-softmax, its gradient


def resident(runtime: int, live_peak: int, transient: int) -> int:
    """Plan of the process's peak RSS: the process before the model, the live peak, and the allocator's slack."""
    return int(runtime + live_peak + ALLOCATOR_SLACK * transient)


def predict(recipe, task, resolved, label_names: list[str], longest: int, batch: int | None = None) -> dict:
    """Predicted training peak of `recipe` for a batch of its longest training example (`longest` tokens)."""
    from .heads import attach as attach_head
    from .methods.base import Context
    from .models import load_config
    from .speed import use_bf16

    config = load_config(resolved, recipe.model, **task.model_kwargs(label_names))
    with torch.device("meta"):
        model = task.MODEL_CLASS.from_config(config)
        if recipe.model.head is not None:
            attach_head(model, recipe.model.head, task.HEADS)
        heads = tuple(h for h in task.HEADS if hasattr(model, h))
        model = recipe.method.wrap(model, Context(heads, task.PEFT_TASK_TYPE, recipe.quant is not None, resolved.path))
    unquantized = heads + tuple(getattr(task, "UNQUANTIZED", ()))
    weights, trainable, total = parameter_bytes(model, recipe.quant, unquantized)
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    batch = batch or levers.micro_batch_size(recipe)
    virtual = getattr(recipe.method, "num_virtual_tokens", 0)
    seq = min(longest, recipe.data.max_length) + (virtual if recipe.method.kind == "prompt" else 0)
    keys = seq + (virtual if recipe.method.kind == "prefix" else 0)  # prefix tuning adds keys, not queries
    tokens = batch * seq
    act = 2 if use_bf16(recipe) else 4
    decoder = recipe.model.task == "causal_lm"
    per_layer = layer_bytes(config, act, decoder, recipe.method.kind == "full", keys) * tokens
    layers = config.num_hidden_layers
    residual = config.hidden_size * 4 * tokens
    if levers.gradient_checkpointing(recipe):  # each layer's input kept; one layer recomputed at a time
        activations = layers * residual + per_layer
    else:
        activations = layers * per_layer
    dora_copies = 2 if getattr(recipe.method, "kind", "") == "dora" and getattr(recipe.method, "dropout", 0) else 1
    quantized = _quantized_linears(model, recipe.quant, unquantized)
    parts = {
        "weights": weights,
        "optimizer": 8 * trainable + 4 * n_trainable,
        "gradients": 4 * trainable,
        # bf16 copies: cached for trainable weights, saved by each matmul for frozen ones; DoRA with dropout runs
        # the adapted layers' base weight a second time (on the dropped-out input)
        "cast_weights": 2 * sum(m.weight.numel() * (dora_copies if name.endswith("base_layer") else 1)
                                for name, m in _base_linears(model)) if act == 2 else 0,
        "activations": int(activations + 2 * residual),  # + embeddings and the final norm
        "adapters": int(adapter_bytes(model, act, getattr(recipe.method, "dropout", 0.0)) * tokens),
        "dequantized": 4 * max((m.weight.numel() for m in quantized), default=0),
        "logits": logits_bytes(config, recipe.model.task, tokens, tokens, levers.chunked_loss(recipe)),
    }
    transient = sum(parts[k] for k in ("cast_weights", "activations", "adapters", "dequantized", "logits"))
    peak = parts["weights"] + parts["optimizer"] + max(transient, parts["gradients"])
    on_gpu = torch.cuda.is_available()
    runtime = 0 if on_gpu else runtime_rss(recipe)
    return {"predicted_train_peak_bytes": peak,
            "predicted_train_peak_rss_bytes": None if on_gpu else resident(runtime, peak, transient),
            "parts": parts | {"runtime": runtime, "transient": transient}, "device": "cuda" if on_gpu else "cpu",
            "batch": batch, "sequence": seq, "trainable_params": trainable, "total_params": total}


def verdict(prediction: dict, budget: int | None) -> tuple[bool, int, str]:
    """Does the prediction fit the budget, else the GPU's memory, else this machine's physical memory?"""
    if budget is not None:
        limit, what = budget, "the budget"
    elif prediction["device"] == "cuda":
        limit, what = torch.cuda.get_device_properties(0).total_memory, "GPU memory"
    else:
        import os

        limit, what = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory"
    return prediction["predicted_train_peak_bytes"] <= limit, limit, what


def parse_size(text: str) -> int:
    """'16GiB', '512MiB', '8GB', '1e9' -> bytes (binary units either way, as memory is sold)."""
    match = re.fullmatch(r"\s*([\d.e+]+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"--budget {text!r}: use a size like 16GiB, 512MiB or 8GB")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " "))


def print_plan(prediction: dict, budget: int | None) -> bool:
    fits, limit, what = verdict(prediction, budget)
    print(f"predicted training peak ({prediction['device']}, live tensors): "
          f"{human_bytes(prediction['predicted_train_peak_bytes'])}")
    if prediction["predicted_train_peak_rss_bytes"]:
        print(f"predicted training peak (process RSS): {human_bytes(prediction['predicted_train_peak_rss_bytes'])}")
    for name, value in prediction["parts"].items():
        print(f"  {name:<12} {human_bytes(value)}")
    print(f"trainable parameters: {prediction['trainable_params']:,} of {prediction['total_params']:,}")
    print(f"{'fits' if fits else 'does not fit'}: {human_bytes(prediction['predicted_train_peak_bytes'])} vs "
          f"{what} {human_bytes(limit)}")
    return fits

"""The memory plan: training peak predicted before a run, from what is known ahead, one term per mechanism.

The model is built on the meta device (no weights are read) and wrapped with the recipe's method, which gives exact
parameter counts per dtype and trainability. For the longest batch (micro-batch x longest sequence), in bytes:

  weights            every parameter and buffer at its stored size: float32 4 B, quantized linear layers at their
                     real bits/param (NF4 + double quantization 4.127, int8 8 + 32/d_in)
  optimizer          AdamW: two float32 moments per trainable parameter and a step count per trainable tensor
  gradients          4 B per trainable parameter (at the optimizer step, when the activations are gone)
  activations: ...   what the transformer layers keep for backward, by kind of module (attention, feed-forward,
                     norms, the method's adapter inputs). Traced, not counted by hand: `traced_layer` runs a two-layer
                     copy of the model with the recipe's method and precision under saved-tensor hooks, which sees
                     exactly which tensors autograd keeps (a frozen linear layer keeps no input, a trained one its
                     input or its bf16 copy; SDPA's path and its float32 probabilities; LoRA's dropped-out inputs;
                     DoRA's base outputs; bf16 weight copies under autocast). Times the layer count; with gradient
                     checkpointing each layer's input plus one layer
  embeddings ...     the embedding output and final norm input (float32, per token)
  backward working   what backward allocates until it leaves the top layer, on top of every saved activation
  set                (gradients through the head and that layer, softmax and activation-function gradients, its
                     parameters' gradients): traced in the same two-layer copy, from the profiler's allocator events
  cast weights       under bf16 autocast, the bf16 copies of linear layers outside the blocks (the output layer)
  dequantized weight a 4/8-bit layer's weight dequantized to float32 for its matmul (the largest, one at a time)
  DoRA weight norm   the weight-shaped temporaries of DoRA's column norms (one layer at a time)
  logits             causal LM: during the loss's backward the float32 log-softmax, its gradient and the logits'
                     gradient over the vocabulary, for every token (label-only chunked loss: one chunk of labelled
                     tokens)

  peak = weights + optimizer + max(transient terms alive at once (transient_bytes), gradients + the last one)

On CPU the plan of resident memory adds the process before the model loads (Python, libraries incl. bitsandbytes
for a quantized base, tokenized data: `runtime`, measured) and the allocator's slack: glibc keeps freed blocks of a
step's transient tensors for reuse rather than returning them (`ALLOCATOR_SLACK` of the transient bytes, set from
benchmarks/memory_calibration.py). Not counted: the compiled kernels oneDNN keeps for bf16 matmuls, one per
operation and shape (capped by levers.limit_onednn_cache; reports/training_rss.md measures what they hold).
"""

from __future__ import annotations

import argparse
import re
import resource

import torch

from . import levers
from .measure import human_bytes
from .memory import LiveTensorWindow
from .quant import full_precision_modules

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


def _layer(model, index: int) -> torch.nn.Module:
    """A transformer block: an entry of the model's stack of layers."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layer", "layers", "h"):
            return module[index]
    raise ValueError(f"no stack of transformer layers found in {type(model).__name__}")


def _category(name: str) -> str:
    lowered = name.lower()
    if re.search(r"(lora_|ia3_|adapter|prefix|prompt)", lowered):
        return "adapter inputs"
    if "norm" in lowered:
        return "norms"
    return "attention" if re.search(r"(attn|attention)", lowered) else "feed-forward"


def _saved_by_layer(model, batch: int, seq: int, autocast: bool, vocab: int) -> dict[str, int]:
    """Bytes the second layer saves for backward in one forward pass of `batch` rows (the last one padded by a token,
    so attention takes the masked path training batches take), by the kind of module that saved them, and the
    "backward working set": what its backward allocates beyond them. The second layer: its input needs a gradient
    whenever anything below it trains, as in every layer of the real stack but the first."""
    layer = _layer(model, 1)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    active: list[str] = []
    saved: dict[int, tuple[str, int]] = {}
    window, marks = LiveTensorWindow(), ("backward begins", "backward leaves the top layer")
    hooks = [layer.register_forward_pre_hook(lambda m, a: _on_gradient(a[0], lambda g: window.mark(marks[1])))]
    for name, module in layer.named_modules():
        hooks.append(module.register_forward_pre_hook(lambda m, a, n=name or "layer": active.append(n)))
        # the hook must return None: a returned value would replace the module's output
        hooks.append(module.register_forward_hook(lambda m, a, o: active.pop() and None))

    def pack(tensor):
        storage = tensor.untyped_storage()
        if active and storage.data_ptr() not in params and storage.data_ptr() not in saved:
            saved[storage.data_ptr()] = (_category(active[-1]), storage.nbytes())
        return tensor

    ids = torch.randint(min(vocab, 1000) // 2, min(vocab, 1000), (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, -1] = 0
    window.start(0)  # from before the forward pass, so that the frees of saved tensors in backward count
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            output = model(input_ids=ids, attention_mask=mask)
        window.mark(marks[0])
        sum(v.float().sum() for v in output.values() if torch.is_tensor(v) and v.requires_grad).backward()
        working_set = window.stop(between=marks)
    finally:
        if window.active:  # the pass failed: leave no profiler running
            window.stop()
        for hook in hooks:
            hook.remove()
    out: dict[str, int] = {}
    for category, nbytes in saved.values():
        out[category] = out.get(category, 0) + nbytes
    out["backward working set"] = working_set
    model.zero_grad(set_to_none=True)
    return out


def _on_gradient(tensor, callback) -> None:
    """Call `callback` when backward reaches `tensor` (an input that needs no gradient never does: the working set is
    then the whole backward's). Returns None: a forward pre-hook's return value would replace the module's input."""
    tensor = tensor[0] if isinstance(tensor, tuple) else tensor
    if tensor.requires_grad:
        tensor.register_hook(lambda grad: callback(grad) and None)


def traced_layer(recipe, task, resolved, label_names: list[str], seq: int, autocast: bool) -> tuple[dict, dict]:
    """What one transformer layer of this recipe keeps for backward: (bytes per batch row, bytes per layer whatever
    the batch: bf16 weight copies), by kind of module. Measured, not counted by hand: a copy of the model
    (two layers, random weights, same dimensions) wrapped with the recipe's method runs forward on 2 and 4 rows of `seq` tokens
    under saved-tensor hooks; the difference is per row, the rest per layer. A quantized base is traced in full
    precision: bitsandbytes' layers keep no input for backward either (their weight is frozen). The "backward working
    set" is the highest rise of live bytes above the end of the forward pass (gradients through the head and the top
    layer, the top layer's parameter gradients and temporaries, less the saved tensors it frees) until the gradient
    leaves the top layer, from the profiler's allocator events; all lower layers' saved tensors are alive meanwhile."""
    import copy

    from .heads import attach as attach_head
    from .methods.base import Context
    from .models import load_config
    from .speed import fp32_attention_applies, keep_attention_fp32

    config = copy.deepcopy(load_config(resolved, recipe.model, **task.model_kwargs(label_names)))
    config.num_hidden_layers = 2
    if recipe.method.kind != "prompt":  # (prompt tuning initialises from the tokenizer's ids)
        config.vocab_size = min(config.vocab_size, 1024)  # the output layer is planned apart (`logits`)
    if hasattr(config, "layer_types"):
        config.layer_types = config.layer_types[:2]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = task.MODEL_CLASS.from_config(config)
        if recipe.model.head is not None:
            attach_head(model, recipe.model.head, task.HEADS)
        heads = tuple(h for h in task.HEADS if hasattr(model, h))
        model = recipe.method.wrap(model, Context(heads, task.PEFT_TASK_TYPE, False, resolved.path))
        if autocast and fp32_attention_applies(recipe):  # as build_trainer does: float32 q/k/v are saved too
            keep_attention_fp32(model)
        model.train()
        two, four = (_saved_by_layer(model, n, seq, autocast, config.vocab_size) for n in (2, 4))
    per_row = {k: max(0, (four.get(k, 0) - two.get(k, 0)) / 2) for k in four}
    per_layer = {k: max(0, two.get(k, 0) - 2 * per_row[k]) for k in four}
    return per_row, per_layer


def _base_linears(model) -> list[tuple[str, torch.nn.Module]]:
    """The model's own linear layers (an adapted one as its base_layer), not the layers methods add."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
            and not re.search(r"(lora_|adapter|prompt_encoder|modules_to_save)", name)]


def logits_bytes(config, task: str, tokens: int, labelled: int, chunked: bool) -> int:
    """The output layer's share: float32 logits, their log-softmax and its gradient, for the causal LM's tokens."""
    if task != "causal_lm":
        return 0
    if chunked:  # label-only chunked cross-entropy: one chunk of the labelled tokens at a time
        return 3 * 4 * min(labelled, levers.LOSS_CHUNK_TOKENS) * config.vocab_size + 4 * labelled * config.hidden_size
    return 3 * 4 * tokens * config.vocab_size  # in backward: log-softmax output, its gradient, the logits' gradient


def resident(runtime: int, live_peak: int, parts: dict) -> int:
    """Plan of the process's peak RSS: the process before the model, the live peak, and the allocator's slack on the
    step's transient tensors: all of them, alive at once or not, since freed blocks of every one stay on the free
    lists. The vocabulary-sized logits are left out of the slack: glibc serves blocks above its
    mmap threshold (at most 32 MiB) with mmap and returns them to the system when they are freed."""
    return int(runtime + live_peak + ALLOCATOR_SLACK * (parts["transient"] - parts["logits"]))


KEPT_ALL_STEP = ("activations: layer inputs (checkpointed)", "activations: embeddings, final norm")
AT_THE_LOSS = ("logits", "cast weights outside the layers")


def transient_bytes(parts: dict, checkpointed: bool) -> int:
    """Activation-like bytes alive at once at the step's peak. Without checkpointing every layer's activations are
    still alive when the loss is computed, so all of them add up. With it, only the layer inputs (and embeddings) live
    through the whole step; the output layer's logits exist while the loss is computed, one layer's recomputed
    internals (its dequantized weight, DoRA's norm) later, during that layer's backward, after the logits are freed:
    the larger of the two counts."""
    transient = {k: v for k, v in parts.items() if k not in ("weights", "optimizer", "gradients")}
    if not checkpointed:
        return sum(transient.values())
    kept = sum(transient[k] for k in KEPT_ALL_STEP)
    at_loss = sum(transient[k] for k in AT_THE_LOSS)
    one_layer = sum(v for k, v in transient.items() if k not in KEPT_ALL_STEP + AT_THE_LOSS)
    return kept + max(at_loss, one_layer)


def predict(recipe, task, resolved, label_names: list[str], longest: int, batch: int | None = None,
            runtime: int | None = None) -> dict:
    """Predicted training peak of `recipe` for `batch` rows (default: its micro-batch) of `longest` tokens;
    `runtime`: the process's RSS before the model loaded (default: this process now, before its model)."""
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
    unquantized = full_precision_modules(task, recipe.method)
    weights, trainable, total = parameter_bytes(model, recipe.quant, unquantized)
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    batch = batch or levers.micro_batch_size(recipe)
    seq = min(longest, recipe.data.max_length)
    virtual = getattr(recipe.method, "num_virtual_tokens", 0) if recipe.method.kind == "prompt" else 0
    tokens = batch * (seq + virtual)  # prompt tuning prepends its tokens to every row
    autocast = use_bf16(recipe)
    per_row, per_layer = traced_layer(recipe, task, resolved, label_names, seq, autocast)
    layers, residual = config.num_hidden_layers, config.hidden_size * 4 * tokens
    working_set = batch * per_row.pop("backward working set") + per_layer.pop("backward working set")
    if levers.gradient_checkpointing(recipe):  # each layer's input kept; one layer recomputed at a time
        stack = {"layer inputs (checkpointed)": layers * residual} | {
            k: batch * per_row[k] + per_layer[k] for k in per_row}
    else:
        stack = {k: layers * (batch * per_row[k] + per_layer[k]) for k in per_row}
    quantized = _quantized_linears(model, recipe.quant, unquantized)
    parts = {
        "weights": weights,
        "optimizer": 8 * trainable + 4 * n_trainable,
        "gradients": 4 * trainable,
        **{f"activations: {k}": int(v) for k, v in sorted(stack.items())},
        "activations: embeddings, final norm": 2 * residual,
        "backward working set (one layer)": int(working_set),
        # bf16 copies of the linear layers outside the transformer blocks (output layer, pooler, head): those inside
        # are in the traced per-layer bytes
        "cast weights outside the layers": 2 * sum(m.weight.numel() for name, m in _base_linears(model)
                                                   if not re.search(r"\.(layer|layers|h)\.\d+\.", name))
        if autocast else 0,
        "dequantized weight": 4 * max((m.weight.numel() for m in quantized), default=0),
        # of the largest layer DoRA adapts (not the output layer, which "all-linear" leaves out)
        "DoRA weight norm": 3 * 4 * max((m.base_layer.weight.numel() for m in model.modules()
                                         if hasattr(m, "lora_magnitude_vector") and hasattr(m, "base_layer")),
                                        default=0) if recipe.method.kind == "dora" else 0,
        "logits": logits_bytes(config, recipe.model.task, tokens, tokens, levers.chunked_loss(recipe)),
    }
    transient = transient_bytes(parts, levers.gradient_checkpointing(recipe))
    # the last gradient to arrive is a temporary of its parameter's size before it is added to .grad (a tied weight,
    # SmolLM2's embedding = output layer, gets two); while it exists every other gradient does too
    last_gradient = 4 * max((p.numel() for p in model.parameters() if p.requires_grad), default=0)
    peak = parts["weights"] + parts["optimizer"] + max(transient, parts["gradients"] + last_gradient)
    on_gpu = torch.cuda.is_available()
    runtime = 0 if on_gpu else runtime if runtime is not None else runtime_rss(recipe)
    return {"predicted_train_peak_bytes": peak,
            "predicted_train_peak_rss_bytes": None if on_gpu else resident(runtime, peak, parts | {"transient": transient_bytes(parts, False)}),
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


def available_memory() -> tuple[int, str]:
    """Memory a run can count on now, and what it is: the GPU's free memory, or the memory the kernel can give
    without swapping (MemAvailable; physical memory where /proc/meminfo is missing), shared by this machine's
    processes of a DDP run (each has a GPU of its own)."""
    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0], "free GPU memory"
    import os

    try:
        with open("/proc/meminfo") as fh:
            fields = dict(line.split(":", 1) for line in fh)
        available, what = int(fields["MemAvailable"].split()[0]) * 1024, "available memory"
    except (OSError, KeyError):
        available, what = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory"
    return available // int(os.environ.get("LOCAL_WORLD_SIZE", "1")), what


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

"""Memory levers: settings that lower the training peak without changing what is learnt (each is tested on and off
for equal losses and gradients, tests/test_levers.py).

- gradient checkpointing (Train.gradient_checkpointing): each layer keeps only its input for backward and
  recomputes the rest there (torch's non-reentrant checkpoint, as transformers applies it);
- micro-batches (Train.micro_batch_size): the batch is computed a micro-batch at a time and the gradients are
  accumulated, so an optimizer step sees the same examples and the same averaged gradient;
- label-only logits (causal LM): the output layer runs only on positions that have a label, a chunk at a time,
  each chunk's logits recomputed in backward instead of kept (`labelled_nll`);
- evaluation and generation batches no larger than what keeps them below the training peak;
- the CPU allocator returns freed memory to the operating system between phases, and after every step where memory
  is short or every N steps where the recipe says so (`release_freed_memory`, Train.trim_memory, `choose_trimming`);
- under --budget, oneDNN keeps at most 256 compiled bf16 kernels instead of 1024 (`limit_onednn_cache`).
`fit_budget` chooses micro-batch and checkpointing for `--budget` from the plan's prediction.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
from contextlib import contextmanager

import torch
from torch.utils.checkpoint import checkpoint

from .errors import PeftlabError

IGNORE = -100

# ------------------------------------------------------------------------------------ recipe settings


def gradient_checkpointing(recipe) -> bool:
    """What Train.gradient_checkpointing="auto" resolves to: on for the causal LM (unless the run finds that it fits
    without: `choose_checkpointing`), off for the encoder tasks.
    A checkpointed step runs every layer's forward twice, about a third more compute. The causal LM's activations
    (SmolLM2 GSM8K, 8 x 384 tokens, 30 layers) are gigabytes, most of its peak, so halving it is worth that; the
    encoders' batches are short (SST-2: 32 x ~25 tokens through 6 MiniLM layers), where activations are a few
    MB against hundreds of MB of weights and optimizer state, and checkpointing would only cost speed.
    Never for PrefixTuning: transformers drops the key-value cache, which carries the prefixes, in checkpointed
    layers (recipe.py refuses an explicit True)."""
    setting = recipe.train.gradient_checkpointing
    if setting == "auto":
        return recipe.model.task == "causal_lm" and recipe.method.kind != "prefix"
    return setting


# The share of the memory available at the start that "auto" lets a run plan for without checkpointing; the rest
# covers the plan's error, evaluation and generation batches, and what else starts on the machine meanwhile.
AUTO_SHARE = 0.5


def automatic_checkpointing(recipe) -> bool:
    """Whether the recipe leaves checkpointing to "auto" and "auto" turns it on (the causal LM): then a run without
    --budget turns it off where the plan without it fits (`choose_checkpointing`)."""
    return recipe.train.gradient_checkpointing == "auto" and gradient_checkpointing(recipe)


def choose_checkpointing(recipe, predict, available: int) -> dict:
    """Checkpointing off when the plan without it (`predict(recipe)`) is within AUTO_SHARE of `available` memory,
    else on; returned with its grounds, for the records. The plan's figure is the process's resident memory on a CPU
    (live tensors, libraries, the allocator's slack), its live tensors on a GPU (no RSS figure there). Checkpointing
    learns the same (tests/test_levers.py) but recomputes every layer's forward in backward: the causal-LM bench
    measures what that costs."""
    prediction = predict(with_levers(recipe, micro_batch_size(recipe), False))
    needs = prediction["predicted_train_peak_rss_bytes"] or prediction["predicted_train_peak_bytes"]
    return {"gradient_checkpointing": needs > AUTO_SHARE * available, "plan_without_bytes": needs,
            "available_bytes": available, "share": AUTO_SHARE}


def choose_trimming(recipe, prediction: dict, available: int, budget: int | None) -> dict:
    """How often freed memory goes back to the system during training (Train.trim_memory; at phase boundaries and
    evaluation batches it always does), with the grounds of an "auto" choice, for the records. Each trim has a price:
    the next step faults the returned pages in again, so "auto" trims every step only under --budget or where the
    plan's RSS is above AUTO_SHARE of `available`. reports/training_rss.md measures RSS and speed of each setting,
    every N steps (Train.trim_memory=N) included."""
    setting = recipe.train.trim_memory
    if setting != "auto":
        return {"trim_memory": setting}
    if budget is not None:
        return {"trim_memory": True, "auto": "--budget"}
    rss = prediction.get("predicted_train_peak_rss_bytes")
    if not rss:
        return {"trim_memory": False, "auto": "no RSS plan (GPU)"}
    return {"trim_memory": rss > AUTO_SHARE * available, "auto": "plan", "plan_rss_bytes": rss,
            "available_bytes": available, "share": AUTO_SHARE}


def trim_period(recipe) -> int | None:
    """Steps between trims as a run resolved Train.trim_memory (building.choose_levers): 1 every step, None between
    phases only; an unresolved "auto" trims every step (the low RSS)."""
    setting = recipe.train.trim_memory
    if setting is False:
        return None
    return 1 if setting in (True, "auto") else setting


def with_trimming(recipe, trim: bool | int):
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, trim_memory=trim))


def describe(settings: dict) -> str:
    """A run's levers (its environment record's `levers`) in words, with the grounds of an automatic choice."""
    from .measure import human_bytes

    auto, budget = settings.get("auto"), settings.get("budget")
    why = (f" (--budget {human_bytes(budget)})" if budget is not None else
           f" (auto: the plan without it, {human_bytes(auto['plan_without_bytes'])}, is "
           f"{'above' if auto['gradient_checkpointing'] else 'within'} {auto['share']:.0%} of the "
           f"{human_bytes(auto['available_bytes'])} available)" if auto else "")
    words = (f"gradient checkpointing {'on' if settings['gradient_checkpointing'] else 'off'}{why}, micro-batch "
             f"{settings['micro_batch_size']} x {settings['accumulation_steps']} accumulation steps")
    return f"{words}, {trimming_words(settings)}{_trimming_grounds(settings.get('trimming'))}"


def trimming_words(settings: dict) -> str:
    """When a run returned freed memory, from its levers record (records made before Train.trim_memory existed
    trimmed after every step)."""
    setting = settings.get("trim_memory", True)
    when = ("between phases only" if setting is False else "after every step" if setting in (True, 1)
            else f"every {setting} steps and between phases")
    return f"freed memory returned {when}"


def _trimming_grounds(trim: dict | None) -> str:
    from .measure import human_bytes

    if not trim or not trim.get("auto"):
        return ""
    if trim["auto"] != "plan":
        return f" (auto: {trim['auto']})"
    fits = "above" if trim["trim_memory"] is True else "within"
    return (f" (auto: the plan's RSS, {human_bytes(trim['plan_rss_bytes'])}, is {fits} {trim['share']:.0%} of the "
            f"{human_bytes(trim['available_bytes'])} available)")


def micro_batch_size(recipe) -> int:
    """Examples per forward pass over all processes (the recipe's batch is global too)."""
    return recipe.train.micro_batch_size or recipe.train.batch_size


def accumulation_steps(recipe) -> int:
    return recipe.train.batch_size // micro_batch_size(recipe)


def with_levers(recipe, micro: int, checkpointing: bool):
    return dataclasses.replace(recipe, train=dataclasses.replace(
        recipe.train, micro_batch_size=micro, gradient_checkpointing=checkpointing))


def eval_batch_size(recipe, num_layers: int) -> int:
    """Evaluation runs under no_grad and keeps nothing for backward: at any moment it holds about one layer's
    activations. A training micro-batch keeps every layer's (or, checkpointed, every layer's input plus one layer's
    activations), so evaluation batches of at most micro x layers examples (micro when checkpointed) stay below the
    training peak, which also holds gradients and optimizer state. Never above Train.eval_batch_size."""
    scale = 1 if gradient_checkpointing(recipe) else num_layers
    return max(1, min(recipe.train.eval_batch_size, micro_batch_size(recipe) * scale))


def generation_batch_size(recipe) -> int:
    """Prompts generated together: at most as many tokens (prompt of up to max_length plus max_new_tokens each) as a
    training micro-batch holds (micro x max_length). A generated token keeps its keys and values in the cache, per
    layer 2 x kv_heads x head_dim numbers (SmolLM2: 384), fewer than the hidden state per layer (576) that even a
    checkpointed training step keeps per token, and one step's logits cover one position per prompt.
    Train.generation_batch_size, when set, is used as given: larger batches generate faster on a CPU
    (reports/bench_causal_lm.md measures it), at the cost of an evaluation peak above the training one."""
    if recipe.train.generation_batch_size is not None:
        return recipe.train.generation_batch_size
    tokens = micro_batch_size(recipe) * recipe.data.max_length
    per_prompt = recipe.data.max_length + recipe.data.max_new_tokens
    return max(1, min(recipe.train.eval_batch_size, tokens // per_prompt))


def settings(recipe) -> dict:
    """The levers a run used, for its records (metrics `memory.levers`)."""
    period = trim_period(recipe)
    return {"gradient_checkpointing": gradient_checkpointing(recipe), "micro_batch_size": micro_batch_size(recipe),
            "accumulation_steps": accumulation_steps(recipe), "trim_memory": {1: True, None: False}.get(period, period)}


# ------------------------------------------------------------------------------------------ --budget


def fit_budget(recipe, predict, budget: int):
    """(recipe with the levers chosen, prediction) for the fastest setting whose predicted training peak fits the
    budget: the largest micro-batch that divides the batch, first without checkpointing (on a CPU a smaller
    micro-batch costs little speed, checkpointing about a third), then with it. An explicit
    Train.gradient_checkpointing is kept; an explicit micro_batch_size is the largest tried. `predict(recipe)` is
    the plan. Stops with the plan's figure at micro-batch 1 with checkpointing if nothing fits."""
    setting = recipe.train.gradient_checkpointing
    options = (False, True) if setting == "auto" else (setting,)
    largest = micro_batch_size(recipe)
    micros = [m for m in range(largest, 0, -1) if recipe.train.batch_size % m == 0 and largest % m == 0]
    for checkpointing in options:
        for micro in micros:
            candidate = with_levers(recipe, micro, checkpointing)
            prediction = predict(candidate)
            if prediction["predicted_train_peak_bytes"] <= budget:
                return candidate, prediction
    from .measure import human_bytes

    raise PeftlabError(f"--budget {human_bytes(budget)}: {recipe.name} does not fit even at micro-batch 1"
                       f"{' with gradient checkpointing' if options[-1] else ''} (plan: "
                       f"{human_bytes(prediction['predicted_train_peak_bytes'])}); raise the budget, or use LoRA/QLoRA "
                       "or shorter sequences (data.max_length)")


# ------------------------------------------------------------------------------- label-only logits


def plain_lm_head(model) -> bool:
    """The model's logits are its output layer applied to the last hidden states, nothing after (no soft-capping
    or scaling, as Gemma and Cohere have): then the output layer can run on the labelled positions alone."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    return (base.get_output_embeddings() is not None and config is not None
            and getattr(config, "final_logit_softcapping", None) is None
            and getattr(config, "logit_scale", None) is None)


@contextmanager
def hidden_states_as_logits(model):
    """Within: the model's forward returns its last hidden states as `logits`; yields the output layer. Swapped
    rather than bypassing the model's forward, so that peft's wrappers (prefix key-values, virtual tokens) and
    transformers' masks still apply, and any wrapping of the output layer (LoRA on lm_head) stays in it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    base.set_output_embeddings(torch.nn.Identity())
    try:
        yield head
    finally:
        base.set_output_embeddings(head)


# labelled tokens per chunk of the loss: SmolLM2's 49,152-word vocabulary makes a chunk's float32 logits 48 MiB
LOSS_CHUNK_TOKENS = 256


def chunked_loss(recipe) -> bool:
    """The causal LM's loss runs label-only and chunked (training.InOrderEvalTrainer, for models whose logits are
    their output layer's: plain_lm_head)."""
    from .speed import enabled

    return recipe.model.task == "causal_lm" and enabled("labelled_logits")


def _chunk_nll(lm_head, hidden, targets):
    return torch.nn.functional.cross_entropy(lm_head(hidden).float(), targets, reduction="none")


def labelled_nll(hidden, labels, lm_head) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example (summed next-token NLL over its labelled positions, their count), as the model's own loss counts
    them (position t predicts labels[t + 1]). The output layer runs on the labelled positions only,
    LOSS_CHUNK_TOKENS at a time; with gradients on, each chunk is checkpointed, so backward recomputes its logits
    instead of keeping them: the vocabulary-sized logits (SmolLM2: 49,152 columns, 0.6 GB per float32 copy for
    8 x 384 tokens) never exist for the whole batch. Written here because the kept libraries that do this (Apple's
    cut-cross-entropy imports triton at import time on Linux; Liger kernels are triton kernels) need a GPU."""
    targets = labels[:, 1:]
    kept = targets != IGNORE
    rows = kept.nonzero()[:, 0]
    states, targets = hidden[:, :-1][kept], targets[kept]
    step, chunks = LOSS_CHUNK_TOKENS, []
    for start in range(0, len(targets), step):
        args = (lm_head, states[start:start + step], targets[start:start + step])
        checkpointed = torch.is_grad_enabled()
        chunks.append(checkpoint(_chunk_nll, *args, use_reentrant=False) if checkpointed else _chunk_nll(*args))
    nll = torch.cat(chunks) if chunks else states.new_zeros(0, dtype=torch.float32)
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=labels.device).index_add(0, rows, nll)
    return sums, kept.sum(1).float()


# ------------------------------------------------------------------------------------------ allocator


def _preloaded_allocator() -> str | None:
    preload = os.environ.get("LD_PRELOAD", "")
    return next((name for name in ("jemalloc", "tcmalloc", "mimalloc") if name in preload), None)


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (musl, macOS)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc.malloc_trim if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "malloc_trim") else None


def allocator_settings() -> dict:
    """What happens to freed tensor memory, for the run's records. glibc keeps a step's freed blocks on its free lists
    and grows its mmap threshold to the largest block freed (up to 32 MiB), so the heap holds the high-water mark of
    every batch shape seen so far: GBs over a causal-LM run. peftlab calls malloc_trim(0) at every phase boundary,
    after every evaluation batch (training.ReleaseFreedMemory) and, where Train.trim_memory says so
    (`choose_trimming`), after every N-th optimizer step, which hands the free lists' whole pages back to the system.
    A lower mmap threshold (every block from 1 MiB mmap-ed, unmapped when freed) holds the RSS as low but makes every
    large allocation fault its pages in afresh (peftlab's earlier default, given up for that cost); trimming pays it once
    per trim, for the pages it returned (reports/training_rss.md measures each period). A preloaded
    jemalloc/tcmalloc, MALLOC_* settings given by the user, or PEFTLAB_DISABLE=allocator leave the allocator as it is."""
    from .speed import enabled

    user = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    if not enabled("allocator"):
        return {"allocator": "unchanged (PEFTLAB_DISABLE=allocator)"}
    if _preloaded_allocator():
        return {"allocator": f"{_preloaded_allocator()} (LD_PRELOAD)"}
    if user:
        return {"allocator": "glibc", "environment": user}
    if _malloc_trim() is None:
        return {"allocator": "system (not glibc): unchanged"}
    return {"allocator": "glibc", "malloc_trim": "between phases, after every evaluation batch and, per "
                                                  "Train.trim_memory, every N optimizer steps"}


# oneDNN, which runs torch's bf16 matmuls on a CPU, keeps a compiled primitive per operation and shape, up to 1024 by
# default: with batches of many lengths that cache holds a few hundred MiB the plan does not count. 256 holds less but
# recompiles more where a run meets more shapes than that (reports/training_rss.md measures RSS and speed with both on
# one recipe), so only a run under --budget gets it.
ONEDNN_CACHE_ENV, ONEDNN_CACHE_CAPACITY = "ONEDNN_PRIMITIVE_CACHE_CAPACITY", 256


def limit_onednn_cache(budget: int | None) -> dict:
    """Under --budget, cap oneDNN's primitive cache unless the user sized it or PEFTLAB_DISABLE=onednn_cache; the size
    the process uses, for its records. oneDNN reads the variable when torch first runs one of its kernels, so this is
    called before a run computes anything (the memory plan's trace included)."""
    from .speed import enabled

    if budget is not None and ONEDNN_CACHE_ENV not in os.environ and enabled("onednn_cache"):
        os.environ[ONEDNN_CACHE_ENV] = str(ONEDNN_CACHE_CAPACITY)
    return {"onednn_primitive_cache": os.environ.get(ONEDNN_CACHE_ENV, "oneDNN default (1024)")}


def release_freed_memory() -> bool:
    """Return glibc's free pages to the system now, if allocator_settings says so; whether it did."""
    if "malloc_trim" not in allocator_settings():
        return False
    _malloc_trim()(0)
    return True

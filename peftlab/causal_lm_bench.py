"""Causal-LM throughput of one recipe (benchmarks/causal_lm_bench.py is the command; reports/bench_causal_lm.md):

- training tokens/s through peftlab's own training path (building.build_model, training.build_trainer, the memory
  meter), the recipe as it is and with one setting changed at a time: gradient checkpointing on and off, packing on
  (data.packing), padding-free batches (transformers' DataCollatorWithFlattening: the whole batch as one row), bf16
  off (PEFTLAB_DISABLE=bf16), torch.compile on. A bounded number of steps after warm-up steps (the first steps pay
  for lazy initialisation and compilation), leaving out the steps the memory profiler watched; tokens are real
  (non-pad) tokens of the batches those steps trained; in rounds of alternating order, since one measurement of a
  few steps moves by several per cent;
- generation tokens/s of greedy batched generation with the key-value cache (tasks/causal_lm.generate: prompts
  sorted by token length, left padding) at several batch sizes, on the recipe's generation prompts, with finished
  rows dropped from the batch (peftlab's greedy_pruned) and kept to the end (transformers' generate), with the
  adapter merged into the weights (tasks/causal_lm.adapter_merged) and not, and whether each gives the same texts as
  the first;
- the model FLOPs utilisation of each against this machine's measured matmul peak (peftlab/flops.py): training
  against the peak of the precision it trains in (bf16 autocast: bf16), generation (float32) against fp32.

Settings run one after another in this process, compilation last (it leaves compiled code behind).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import DataCollatorWithFlattening, TrainerCallback

from . import building, flops, levers, measure, memory, rundir, speed
from . import data as data_stage
from .errors import check
from .recipe import load_recipe, recipe_to_dict
from .run_report import table
from .tasks import causal_lm, metrics_for
from .training import build_trainer

IGNORE = -100
# decoder: (finished rows, whether a peft adapter is folded into the weights while generating)
DECODERS = {"pruned": ("dropped (peftlab)", True), "generate": ("kept (transformers' generate)", True),
            "unmerged": ("dropped (peftlab)", False)}


@dataclass(frozen=True)
class Variant:
    describe: str
    overrides: tuple[str, ...] = ()
    disable: str = ""  # a speed switch turned off (PEFTLAB_DISABLE)
    flatten: bool = False  # DataCollatorWithFlattening instead of the task's collator
    compile: bool = False
    once: bool = False  # measured in one round only, after all the others (compile: minutes of warm-up a round)


VARIANTS = {
    "recipe": Variant("the recipe as it is (gradient checkpointing as \"auto\" chooses on this machine)"),
    "checkpointing": Variant("gradient checkpointing on", ("train.gradient_checkpointing=True",)),
    "no_checkpointing": Variant("gradient checkpointing off", ("train.gradient_checkpointing=False",)),
    "packing": Variant("packing on: examples share rows of max_length tokens", ("data.packing=True",)),
    "padding_free": Variant("padding-free: DataCollatorWithFlattening, the batch as one row", flatten=True),
    "no_bf16": Variant("bf16 off: float32 training", disable="bf16"),
    "trim_every_step": Variant("malloc_trim after every step (Train.trim_memory=True)", ("train.trim_memory=True",)),
    "lora_dropout": Variant("LoRA dropout 0.05: a random mask over each adapted layer's input",
                            ("method.dropout=0.05",)),
    "compile": Variant("torch.compile(dynamic=True) on the model", compile=True, once=True),
}


@dataclass
class Settings:
    steps: int = 6  # measured training steps per variant and round (steps the memory profiler watched excluded)
    warmup: int = 2  # steps before them, not measured
    rounds: int = 2  # every variant (but `once` ones) per round, in alternating order
    prompts: int = 16  # generation prompts
    max_new_tokens: int | None = None  # default: the recipe's
    batch_sizes: tuple[int, ...] = (1, 4, 8, 16)
    decoders: tuple[str, ...] = tuple(DECODERS)
    peak_seconds: float = 4.0
    variants: tuple[str, ...] = tuple(VARIANTS)
    overrides: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ training

class BatchLog:
    """The collator, recording what each batch holds: its examples' lengths (packed rows split at their position
    resets), real tokens and labelled tokens. Batches are collated in the order they are trained."""

    def __init__(self, collate):
        self.collate, self.batches = collate, []

    def __call__(self, features):
        lengths, labelled = [], 0
        for f in features:
            if "position_ids" in f:
                starts = [i for i, p in enumerate(f["position_ids"]) if p == 0] + [len(f["input_ids"])]
                lengths += [b - a for a, b in zip(starts, starts[1:])]
            else:
                lengths.append(len(f["input_ids"]))
            labelled += sum(label != IGNORE for label in f["labels"][1:])
        self.batches.append({"lengths": lengths, "tokens": sum(lengths), "labelled": labelled})
        return self.collate(features)


def flattening_collator():
    """transformers' padding-free batches: one row, position ids restarting per example, the first label of each
    example -100; no cache, so that Llama-style models keep the examples apart (as tasks/causal_lm.collator)."""
    flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE)
    return lambda features: flatten(features) | {"use_cache": False}


class StepClock(TrainerCallback):
    """Seconds of each training step and whether the memory meter's profiler watched it (its allocator events make a
    step several times slower: those steps are not measured); stops training once `measured` steps after `warmup`
    ran unprofiled (no evaluation, no checkpoint). Added after the meter, so it sees the meter's verdict on a step."""

    def __init__(self, warmup: int, measured: int, meter: memory.MemoryMeter):
        self.warmup, self.measured, self.meter = warmup, measured, meter
        self.seconds, self.profiled, self._last = [], [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._last = self._last or time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.seconds.append(now - self._last)
        self.profiled.append(state.global_step in self.meter.profiled_steps)
        self._last = now
        control.should_training_stop = len(self.measured_steps()) >= self.measured
        control.should_evaluate = control.should_save = False
        return control

    def measured_steps(self) -> list[int]:
        return [i for i in range(self.warmup, len(self.seconds)) if not self.profiled[i]]


def train_variant(recipe_path: Path, variant: Variant, settings: Settings, data_root: Path | None,
                  model_flops: flops.ModelFlops, peak: dict) -> dict:
    """Tokens/s and MFU of the measured steps of one variant (or the error it ended with). "auto" levers are
    resolved as a run resolves them (building.choose_levers), so the recipe trains as `peftlab.run` would here."""
    recipe = load_recipe(recipe_path, [*settings.overrides, *variant.overrides])
    os.environ[speed.DISABLE_ENV] = variant.disable
    try:
        inputs = building.prepare_inputs(recipe, data_root)
        recipe = building.choose_levers(recipe, inputs, None)[0]
        model = building.build_model(recipe, inputs.task, inputs.resolved, inputs.labels)
        if variant.compile:
            model.compile(dynamic=True)
        meter = memory.MemoryMeter(levers.trim_period(recipe))
        clock = StepClock(settings.warmup, settings.steps, meter)
        with tempfile.TemporaryDirectory() as out:
            trainer = build_trainer(recipe, inputs.task, model, inputs.tokenizer, inputs.train, inputs.selection,
                                    Path(out), metrics_for(inputs.task, inputs.selection, inputs.splits.selection,
                                                           inputs.labels, recipe), inputs.labels, meter)
            log = BatchLog(flattening_collator() if variant.flatten else trainer.data_collator)
            trainer.data_collator = log
            trainer.add_callback(clock)
            try:
                trainer.train()
            except Exception as err:  # a setting that does not work here is a result, recorded (e.g. compile)
                return {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
        bf16 = speed.use_bf16(recipe)
    finally:
        os.environ.pop(speed.DISABLE_ENV, None)
    per_step = levers.accumulation_steps(recipe)
    steps = clock.measured_steps()
    measured = [b for i in steps for b in log.batches[i * per_step:(i + 1) * per_step]]
    seconds = sum(clock.seconds[i] for i in steps)
    check(measured and seconds > 0, f"{recipe.name}: too few training steps to measure; lower --warmup/--steps "
                                    "or raise data.train_limit")
    tokens = sum(b["tokens"] for b in measured)
    model_work = sum(model_flops.training(b["lengths"], b["labelled"]) for b in measured)
    precision = "bf16" if bf16 else "fp32"
    return {"steps": len(steps), "seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds,
            "step_seconds": clock.seconds, "profiled_steps": [i for i, p in enumerate(clock.profiled) if p],
            "examples": sum(len(b["lengths"]) for b in measured), "model_flops": model_work,
            "precision": precision, "mfu": flops.mfu(model_work, seconds, peak[precision]),
            "speed": speed.settings(recipe) | {"packing": recipe.data.packing}, "levers": levers.settings(recipe),
            "train_rss_bytes": meter.rss.peaks.get("train")}  # the unprofiled steps' peak RSS


def training_order(variants: tuple[str, ...], rounds: int) -> list[tuple[int, str]]:
    """(round, variant) in the order they run: each round every variant but the `once` ones, the order reversed
    every other round (a drift of the machine's speed over the bench falls on every variant alike); the `once` ones
    at the very end, since compilation leaves compiled code behind."""
    each = [v for v in variants if not VARIANTS[v].once]
    return ([(r, v) for r in range(rounds) for v in (each if r % 2 == 0 else each[::-1])]
            + [(0, v) for v in variants if VARIANTS[v].once])


def summarise(rounds: list[dict], recipe_rounds: list[dict]) -> dict:
    """A variant's rounds: the median tokens/s and MFU, and its ratio to the recipe's tokens/s of the same round
    (a `once` variant: to the recipe's median) as the median and range over rounds."""
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return {"error": rounds[0]["error"]}
    base = [r.get("tokens_per_second") for r in recipe_rounds]
    if len(ok) == len(base) and all(base):  # round by round
        paired = [r["tokens_per_second"] / b for r, b in zip(ok, base)]
    else:
        base = statistics.median([b for b in base if b]) if any(base) else None
        paired = [r["tokens_per_second"] / base for r in ok] if base else []
    return {"tokens_per_second": statistics.median(r["tokens_per_second"] for r in ok),
            "mfu": statistics.median(r["mfu"] for r in ok), "precision": ok[0]["precision"],
            "train_rss_bytes": max(r["train_rss_bytes"] or 0 for r in ok) or None,  # None: no reading (not Linux)
            "vs_recipe": statistics.median(paired) if paired else None,
            "vs_recipe_range": [min(paired), max(paired)] if paired else None, "rounds": rounds}


# ---------------------------------------------------------------------------------------------- generation

def generation(recipe, inputs, model, settings: Settings, model_flops: flops.ModelFlops, peak: dict) -> dict:
    """Greedy batched generation at each batch size on the same prompts: tokens/s, MFU, same texts as batch 1."""
    rows = list(inputs.splits.generate)[:settings.prompts]
    check(rows, f"{recipe.name}: no generation prompts (data.generate_split); the bench generates from them")
    prompts = [causal_lm.generation_case(inputs.tokenizer, recipe.data, row, f"row {i}")[0] for i, row in enumerate(rows)]
    prompt_lengths = [len(ids) for ids in inputs.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    new_tokens = settings.max_new_tokens or recipe.data.max_new_tokens
    results, first = [], None
    for size in settings.batch_sizes:
        for decoder in settings.decoders:
            print(f"generation: batch {size}, {decoder} …", file=sys.stderr, flush=True)
            started = time.perf_counter()
            with causal_lm.adapter_merged(model, merge=DECODERS[decoder][1]) as merged:
                texts, counts = causal_lm.generate_counted(model, inputs.tokenizer, prompts, new_tokens,
                                                           batch_size=size, prune=decoder != "generate")
            seconds = time.perf_counter() - started
            first = first or texts
            work = model_flops.generation(prompt_lengths, counts)
            results.append({"batch_size": size, "decoder": decoder, "adapter_merged": merged, "seconds": seconds,
                            "new_tokens": sum(counts),
                            "tokens_per_second": sum(counts) / seconds, "model_flops": work,
                            "mfu": flops.mfu(work, seconds, peak["fp32"]), "same_texts_as_first": texts == first})
    return {"prompts": len(prompts), "max_new_tokens": new_tokens, "prompt_tokens": prompt_lengths,
            "recipe_batch_size": levers.generation_batch_size(recipe), "runs": results}


# ------------------------------------------------------------------------------------------------ the bench

def bench(recipe_path: Path, settings: Settings, data_dir: str | None, out: Path, command: str) -> dict:
    """Measure, write <out>/bench_causal_lm.md and .json; the record."""
    unknown = [v for v in settings.variants if v not in VARIANTS]
    check(not unknown, f"unknown variant {', '.join(unknown)}; use any of {', '.join(VARIANTS)}")
    recipe = load_recipe(recipe_path, settings.overrides)  # every check before anything runs
    check(recipe.model.task == "causal_lm", f"{recipe_path}: model.task={recipe.model.task!r}; this bench measures "
                                            "causal-LM recipes")
    data_root = data_stage.data_dir(data_dir)
    data_stage.preflight(recipe.data, data_root, causal_lm.columns(recipe))
    inputs = building.prepare_inputs(recipe, data_root)
    model = building.build_model(recipe, inputs.task, inputs.resolved, inputs.labels)
    config = model.config
    peak = flops.peak(getattr(config, "intermediate_size", None) or config.hidden_size, settings.peak_seconds)
    model_flops = flops.model_flops(model, recipe.data.max_length, causal_lm=True)
    record = {"command": command, "recipe": recipe_to_dict(recipe), "environment": measure.environment(),
              "settings": vars(settings), "peak": peak,
              "model_flops": model_flops.record(), "generation": generation(recipe, inputs, model, settings,
                                                                            model_flops, peak)}
    del model
    rounds = {name: [] for name in settings.variants}
    for round_, name in training_order(settings.variants, settings.rounds):
        print(f"training, round {round_ + 1}: {VARIANTS[name].describe} …", file=sys.stderr, flush=True)
        rounds[name].append(train_variant(recipe_path, VARIANTS[name], settings, data_root, model_flops, peak))
    record["training"] = {name: summarise(runs, rounds.get("recipe", [])) for name, runs in rounds.items()}
    out.mkdir(parents=True, exist_ok=True)
    rundir.write_json(out / "bench_causal_lm.json", record)
    rundir.write_atomic(out / "bench_causal_lm.md", render(record))
    return record


# ------------------------------------------------------------------------------------------------- report

def _noise_note(training: dict) -> str:
    """How far measurements of one setting move: the recipe's own rounds, and the settings that train exactly as the
    recipe does on this machine (bf16 off where bf16 is not native; checkpointing as "auto" chose it). A setting
    whose effect is of that size has none this bench can show."""
    recipe = training.get("recipe", {})
    if "error" in recipe:
        return ""
    speeds = [r["tokens_per_second"] for r in recipe["rounds"] if "error" not in r]
    notes = []
    if len(speeds) > 1:
        notes.append(f"the recipe's own {len(speeds)} rounds differ by {100 * (max(speeds) / min(speeds) - 1):.0f} %")
    first = next((r for r in recipe["rounds"] if "error" not in r), {})
    same = {"no_bf16": first.get("precision") == "fp32",
            "no_checkpointing": not first.get("levers", {}).get("gradient_checkpointing", True),
            "checkpointing": first.get("levers", {}).get("gradient_checkpointing", False)}
    for name, identical in same.items():
        result = training.get(name, {})
        if identical and result.get("vs_recipe"):
            notes.append(f"`{name}` trains exactly as `recipe` does here and measures {result['vs_recipe']:.2f}×")
    return ("\n\nNoise: " + "; ".join(notes) + ". A setting whose effect is of that size has none this bench can "
            "show.") if notes else ""


def _step_seconds(run: dict) -> str:
    return ", ".join(f"{t:.1f}" + ("p" if i in run["profiled_steps"] else "") for i, t in enumerate(run["step_seconds"]))


def _adapter(run: dict) -> str:
    merged = run.get("adapter_merged")  # absent from records written before it was measured
    return "—" if merged is None else "merged" if merged else "not merged"


def render(record: dict) -> str:
    """Markdown from the bench record; computes nothing beyond ratios of what was measured."""
    recipe, peak, env = record["recipe"], record["peak"], record["environment"]
    training = []
    for name, result in record["training"].items():
        if "error" in result:
            training.append([name, VARIANTS[name].describe, "failed: " + result["error"], "", "", "", "", "", ""])
            continue
        ratio, spread = result["vs_recipe"], result["vs_recipe_range"]
        training.append([
            name, VARIANTS[name].describe, f"{result['tokens_per_second']:.1f}",
            ", ".join("failed" if "error" in r else f"{r['tokens_per_second']:.1f}" for r in result["rounds"]),
            "—" if ratio is None else f"{ratio:.2f}×" + (f" ({spread[0]:.2f}–{spread[1]:.2f})" if len(
                result["rounds"]) > 1 else ""),
            " / ".join(_step_seconds(r) for r in result["rounds"] if "error" not in r), result["precision"],
            f"{100 * result['mfu']:.1f} %", measure.human_bytes(result.get("train_rss_bytes"))])
    gen = record["generation"]
    generating = [[r["batch_size"] if r["batch_size"] != gen["recipe_batch_size"] else f"{r['batch_size']} (recipe)",
                   DECODERS[r.get("decoder", "generate")][0], _adapter(r), r["new_tokens"], f"{r['seconds']:.1f}",
                   f"{r['tokens_per_second']:.1f}", f"{100 * r['mfu']:.1f} %",
                   "yes" if r["same_texts_as_first"] else "**no**"] for r in gen["runs"]]
    s = record["settings"]
    return "\n\n".join([
        f"# Causal-LM throughput: {recipe['name']}",
        "Generated by `benchmarks/causal_lm_bench.py` (library: `peftlab/causal_lm_bench.py`). Command:\n\n```\n"
        + record["command"] + "\n```",
        f"Model {recipe['model']['name']}, {recipe['method']['kind']} from the recipe, batch "
        f"{recipe['train']['batch_size']}, max_length {recipe['data']['max_length']}. "
        f"Machine peak (square {peak['size']} matmuls, `peftlab/flops.py`): fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, "
        f"bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s. Model FLOPs: forward and backward matmuls of every example at its "
        "real length (frozen weights: input gradient only; attention's seq² products), the output layer on the "
        "labelled tokens (training) or the generated ones (generation); MFU = model FLOPs/s ÷ the peak of the "
        "precision the setting computes in.",
        f"## Training\n\npeftlab's training path, {s['warmup']} warm-up steps then {s['steps']} measured, in "
        f"{s['rounds']} rounds (each round every setting once, the order reversed every other round; "
        + ", ".join(n for n in record["training"] if VARIANTS[n].once) + " in the first only). Steps the memory "
        "profiler watched (marked p: its allocator events slow a step several times) are not measured. tokens/s = "
        "real tokens of the measured steps ÷ their seconds, median over rounds; vs recipe: the median (range) of "
        "each round's ratio to the recipe's tokens/s in that round; each setting changed alone against the "
        "recipe. Training RSS: the process's peak resident memory over the unprofiled steps, the highest of the "
        "rounds.\n\n"
        + table(["setting", "what", "tokens/s", "per round", "vs recipe", "seconds per step (warm-up first)",
                 "precision", "MFU", "training RSS"], training) + _noise_note(record["training"]),
        f"## Generation\n\nGreedy, key-value cache, {gen['prompts']} prompts of the generation split sorted by "
        f"token length, left padding, at most {gen['max_new_tokens']} new tokens, float32; tokens/s counts each "
        "prompt's tokens up to its end-of-sequence token. \"finished rows\": dropped from the batch as each prompt "
        "ends (peftlab's greedy decoding), or kept computing until the batch's longest answer ends (transformers' "
        "generate). \"adapter\": folded into the base weights while generating (peftlab's default for a "
        "mergeable adapter on a float base, tasks/causal_lm.adapter_merged) or not (computed beside them, or no "
        "adapter to merge). \"same texts\": every output equal to the first setting's.\n\n"
        + table(["batch", "finished rows", "adapter", "new tokens", "seconds", "tokens/s", "MFU", "same texts"],
                generating),
        "## Environment\n\n" + table(["item", "value"], [
            ["hardware", f"{env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} torch threads), "
                         f"GPU: {env['gpu'] or 'none'}"],
            ["versions", ", ".join(f"{k} {v}" for k, v in env["versions"].items())],
            ["peftlab commit", env.get("peftlab_commit")],
            ["machine load (1-min average at start)", f"{env['load_average_at_start']:.1f}"]]),
    ]) + "\n"


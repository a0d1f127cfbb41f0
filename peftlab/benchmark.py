"""Training throughput of one recipe three ways, side by side (python -m peftlab.bench is the command):

1. tutorial: transformers Trainer, every example padded to data.max_length, random batches;
2. best practice: the strongest plain-Trainer configuration a careful user writes: dynamic padding
   (DataCollatorWithPadding), group_by_length, bf16=True where the hardware computes bf16 natively (the test
   peftlab's own bf16 uses, speed.bf16_supported), fused AdamW where torch has it, SDPA attention;
3. peftlab: `python -m peftlab.run RECIPE` itself.

All three build the model from the recipe (building.build_model: same method, dropout, head and seed) and train the
same examples with the same hyperparameters and number of steps; the same StepTimer times their training steps.
Each run is a process of its own (clean peak memory). One round per seed (the accuracy compared is the mean over
seeds, since one batch order alone moves it by about a point on 16,000 SST-2 sentences), times the repeats; round r
runs the approaches in the order rotated by r (1 2 3, 2 3 1, 3 1 2, …), so that neither drift nor a warm or cold
machine favours one position. Speed-ups are taken within each round (peftlab ÷ each baseline, same moment of the
machine) and reported with their spread over rounds.
The limit: once per bench, the machine's sustained matmul throughput and the model FLOPs per training example
(peftlab/flops.py) give each run's model FLOPs utilisation. The ablation reruns peftlab with each of its speed
settings off (peftlab/speed.py); the profile times the stages of one peftlab run (peftlab/phases.py).
"""


from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, default_data_collator

from . import building, flops, measure, models, pipeline, rundir, speed
from . import data as data_stage
from .errors import check
from .phases import profile_run
from .recipe import load_recipe, recipe_to_dict
from .run_report import table
from .tasks import classification, get_task, metrics_for
from .training import StepTimer

APPROACHES = {
    "tutorial": "Trainer, every example padded to max_length, random batches",
    "best_practice": "Trainer, DataCollatorWithPadding + group_by_length, bf16=True where native, fused AdamW, SDPA",
    "peftlab": "python -m peftlab.run (length buckets, bf16 autocast where native, fused AdamW)",
}
TARGETS = {"tutorial": 12.0, "best_practice": 1.3}  # peftlab's samples/s at least this many times theirs
ACCURACY_TOLERANCE = 0.005  # equal validation accuracy: within half a point, or no difference the seeds can tell


# ------------------------------------------------------------------------------- workers (one process each)

def fused_adamw_available(device: str) -> bool:
    """torch's fused AdamW kernel exists for this device (CPU since torch 2.4)."""
    try:
        torch.optim.AdamW([torch.zeros(1, device=device, requires_grad=True)], fused=True)
        return True
    except (RuntimeError, ValueError):
        return False


def best_practice_settings(recipe) -> dict:
    """What a careful Trainer user turns on, decided on this machine as for peftlab."""
    device = "cpu" if speed.on_cpu(recipe) else "cuda"
    return {"bf16": speed.bf16_supported(recipe),
            "optim": "adamw_torch_fused" if fused_adamw_available(device) else "adamw_torch"}


def use_sdpa(model) -> str:
    """The model's attention as SDPA (what from_pretrained(attn_implementation="sdpa") gives); what it now uses."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        base.set_attn_implementation("sdpa")
    except (ValueError, ImportError):  # an architecture without SDPA support keeps its own
        pass
    return base.config._attn_implementation


def train_plain(recipe, data_root: Path | None, padded: bool) -> dict:
    """Approaches 1 (padded=True: the tutorial) and 2 (padded=False: best practice): the model from the recipe,
    everything else plain transformers."""
    task = get_task(recipe.model.task)
    resolved = models.resolve(recipe.model.name, recipe.model.revision)
    tokenizer = models.load_tokenizer(resolved, recipe.model)
    splits = data_stage.load_splits(recipe.data, data_root)
    labels = task.labels(recipe, splits.train)
    d, t = recipe.data, recipe.train

    def encode(batch):  # the tutorial way: tokenizer call with or without padding="max_length"
        encoded = tokenizer(batch[d.text], batch[d.text_pair] if d.text_pair else None, truncation=True,
                            max_length=d.max_length, padding="max_length" if padded else False)
        encoded["labels"] = classification.label_ids(batch[d.label], labels, "bench")
        return encoded

    train = splits.train.map(encode, batched=True, remove_columns=splits.train.column_names)
    evaluation = splits.eval.map(encode, batched=True, remove_columns=splits.eval.column_names)
    evaluation = evaluation.add_column("example_id", range(len(evaluation)))  # scoring maps records by it
    model = building.build_model(recipe, task, resolved, labels)
    extra = {} if padded else best_practice_settings(recipe)
    attention = model.config._attn_implementation if padded else use_sdpa(model)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.eval_batch_size,
            num_train_epochs=t.epochs, max_steps=t.max_steps or -1, learning_rate=t.lr, weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm, warmup_steps=t.warmup_ratio, lr_scheduler_type=t.scheduler, seed=t.seed,
            train_sampling_strategy="random" if padded else "group_by_length", eval_strategy="no",
            save_strategy="no", logging_steps=t.logging_steps, report_to=[], disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(), **extra)
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                          data_collator=default_data_collator if padded else DataCollatorWithPadding(tokenizer),
                          processing_class=tokenizer, callbacks=[timer],
                          compute_metrics=metrics_for(task, evaluation, splits.eval, labels, recipe))
        trainer.train()
        scores = trainer.evaluate()
    epochs = trainer.state.epoch
    real_tokens = sum(map(sum, train["attention_mask"])) * epochs
    return {"train_seconds": timer.train_seconds, "eval_seconds": scores["eval_runtime"],
            "steps": trainer.state.global_step, "epochs": epochs,
            "samples_per_second": len(train) * epochs / timer.train_seconds,
            "tokens_per_second": real_tokens / timer.train_seconds,
            "task_metrics": {k[5:]: v for k, v in scores.items() if k.startswith("eval_") and "runtime" not in k
                             and "per_second" not in k},
            "train_examples": len(train), "eval_examples": len(evaluation), "data_files": splits.files,
            "settings": {"precision": "bf16" if extra.get("bf16") else "fp32",
                         "optimizer": getattr(trainer.args.optim, "value", trainer.args.optim), "attention": attention},
            **measure.peak_memory()}


def peftlab_result(run_dir: Path) -> dict:
    metrics = rundir.read_json(run_dir / "metrics.json")
    env = rundir.read_json(run_dir / "environment.json")
    evals = [e["eval_runtime"] for e in rundir.read_json(run_dir / "log_history.json") if "eval_runtime" in e]
    return {"train_seconds": metrics["train_seconds"], "eval_seconds": sum(evals), "evaluations": len(evals),
            "steps": metrics["steps"], "epochs": metrics["epochs"],
            "samples_per_second": metrics["train_samples_per_second"],
            "tokens_per_second": metrics["train_tokens_per_second"], "task_metrics": metrics["task_metrics"],
            "train_examples": env["data"]["train_examples"], "eval_examples": env["data"]["eval_examples"],
            "data_files": env["data"]["files"], "speed": env.get("speed"), "peak_rss_bytes": metrics["peak_rss_bytes"]}


def run_args(recipe_path: Path, overrides: list[str], data_dir: str | None, runs_dir: Path) -> list[str]:
    return [str(recipe_path), *[f"--set={o}" for o in overrides], *(["--data-dir", data_dir] if data_dir else []),
            "--runs-dir", str(runs_dir), "--reports-dir", ""]


def ablation(recipe_path: Path, overrides: list[str], data_dir: str | None, repeats: int) -> list[dict]:
    """peftlab runs in this process with all speed settings on, then each off alone, alternating; a first run
    only warms up (lazy imports, first kernels), so that no variant pays for it."""
    rows = []
    for repeat in range(repeats + 1):
        for off in [None, *speed.SWITCHES] if repeat else [None]:
            os.environ[speed.DISABLE_ENV] = off or ""
            with tempfile.TemporaryDirectory() as runs:
                check(run_in_process(recipe_path, overrides, data_dir, Path(runs)) == 0,
                      f"peftlab run with {off or 'nothing'} off failed")
                result = peftlab_result(next(Path(runs).iterdir()))
            if repeat:
                rows.append({"off": off, "repeat": repeat, **result})
    os.environ.pop(speed.DISABLE_ENV)
    return rows


def run_in_process(recipe_path: Path, overrides: list[str], data_dir: str | None, runs_dir: Path) -> int:
    """A peftlab run in this process, as `python -m peftlab.run` with run_args(...) makes it; its exit code."""
    options = pipeline.Options(recipe_path, list(overrides), data_dir, runs_dir, reports_dir="")
    argv = run_args(recipe_path, overrides, data_dir, runs_dir)
    return pipeline.run(options, argv, Console(stderr=True, soft_wrap=True))


def profile(recipe_path: Path, overrides: list[str], data_dir: str | None, task: str) -> dict:
    with tempfile.TemporaryDirectory() as runs:
        timed = profile_run(lambda: run_in_process(recipe_path, overrides, data_dir, Path(runs)), task)
        check(timed["exit_code"] == 0, "the profiled peftlab run failed")
        return timed | {"run": peftlab_result(next(Path(runs).iterdir()))}


def limit(recipe, data_root: Path | None, seconds: float = 4.0) -> dict:
    """The machine's matmul peak (square products the size of the model's widest layer) and the model FLOPs per
    training example, averaged over the training examples as peftlab prepares them (real tokens only)."""
    inputs = building.prepare_inputs(recipe, data_root)
    model = building.build_model(recipe, inputs.task, inputs.resolved, inputs.labels)
    config = model.config
    size = getattr(config, "intermediate_size", None) or getattr(config, "hidden_size", None) or 1024
    counted = flops.model_flops(model, recipe.data.max_length, causal_lm=recipe.model.task == "causal_lm")
    lengths = inputs.train["length"]
    device = "cpu" if speed.on_cpu(recipe) else "cuda"
    return {"peak": flops.peak(size, seconds, device), "model_flops": counted.record(),
            "flops_per_example": counted.training(lengths) / len(lengths), "train_examples": len(lengths)}


def worker(kind: str, args) -> dict:
    pipeline.quiet_libraries()
    data_root = data_stage.data_dir(args.data_dir)
    if kind == "limit":
        return limit(load_recipe(args.recipe, args.overrides), data_root)
    if kind in ("tutorial", "best_practice"):
        return train_plain(load_recipe(args.recipe, args.overrides), data_root, padded=kind == "tutorial")
    if kind == "ablation":
        return {"rows": ablation(args.recipe, args.overrides, args.data_dir, args.repeats)}
    return profile(args.recipe, args.overrides, args.data_dir, load_recipe(args.recipe, args.overrides).model.task)


# ------------------------------------------------------------------------------------------- orchestrator

def spawn(kind: str, args, overrides: list[str]) -> dict:
    """One measurement in a fresh process; its result plus the process's wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "peftlab":
            command = [sys.executable, "-m", "peftlab.run", *run_args(args.recipe, overrides, args.data_dir, Path(tmp))]
        else:
            command = [sys.executable, "-m", "peftlab.bench", str(args.recipe), "--worker", kind,
                       "--result", str(Path(tmp) / "result.json"), "--repeats", str(args.ablation_repeats),
                       *[f"--set={o}" for o in overrides], *(["--data-dir", args.data_dir] if args.data_dir else [])]
        started = time.perf_counter()
        done = subprocess.run(command, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - started
        check(done.returncode == 0, f"bench run '{kind}' failed (exit {done.returncode}): "
                                    f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
        result = peftlab_result(next(p for p in Path(tmp).iterdir() if p.is_dir())) if kind == "peftlab" \
            else rundir.read_json(Path(tmp) / "result.json")
    return result | {"wall_seconds": wall}


def round_order(round_index: int) -> list[str]:
    """The approaches in the order round `round_index` (from 0) runs them: rotated by the round."""
    names = list(APPROACHES)
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def mean_interval(values: list[float], level: float = 0.95) -> dict:
    """Mean, min, max and the Student-t interval of the mean (none from one value)."""
    from scipy.stats import t

    mean = statistics.mean(values)
    half = t.ppf((1 + level) / 2, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5 \
        if len(values) > 1 else float("nan")
    return {"mean": mean, "low": mean - half, "high": mean + half, "min": min(values), "max": max(values),
            "n": len(values)}


def per_round_ratios(runs: list[dict]) -> dict[str, list[float]]:
    """peftlab's samples/s ÷ each baseline's, within each round (same seed and repeat: the same moment)."""
    rounds = {}
    for r in runs:
        rounds.setdefault((r["seed"], r["repeat"]), {})[r["approach"]] = r["samples_per_second"]
    return {name: [speeds["peftlab"] / speeds[name] for speeds in rounds.values()] for name in TARGETS}


def per_seed(runs: list[dict], name: str, metric: str) -> dict:
    """The approach's metric per seed (mean over that seed's repeats)."""
    mine = [r for r in runs if r["approach"] == name]
    return {seed: statistics.mean(r["task_metrics"][metric] for r in mine if r["seed"] == seed)
            for seed in dict.fromkeys(r["seed"] for r in mine)}


def summarize(runs: list[dict], metric: str, limit_record: dict | None = None) -> dict:
    """Per approach: median speeds, the metric's mean over seeds with its 95 % interval, and the MFU; per baseline:
    the per-round speed-ups (median, spread, 95 % interval) and peftlab's metric gap, paired by seed."""
    out = {}
    for name in APPROACHES:
        mine = [r for r in runs if r["approach"] == name]
        out[name] = {key: statistics.median(r[key] for r in mine) for key in
                     ("samples_per_second", "tokens_per_second", "train_seconds", "eval_seconds", "wall_seconds",
                      "peak_rss_bytes")}
        scores = mean_interval(list(per_seed(runs, name, metric).values()))
        out[name] |= {metric: scores["mean"], f"{metric}_interval": [scores["low"], scores["high"]]}
        if limit_record:
            out[name]["mfu"] = statistics.median(run_mfu(r, limit_record) for r in mine)
    ours = per_seed(runs, "peftlab", metric)
    for name, ratios in per_round_ratios(runs).items():
        theirs = per_seed(runs, name, metric)
        gap = mean_interval([ours[seed] - theirs[seed] for seed in ours])
        speedup = statistics.median(ratios)
        # equal: within the tolerance, or a per-seed difference whose 95 % interval holds 0 (with several seeds)
        equal = abs(gap["mean"]) <= ACCURACY_TOLERANCE or gap["low"] <= 0 <= gap["high"]
        spread = mean_interval(ratios)
        verdict = speed_verdict(speedup, spread["low"], TARGETS[name])
        out[name] |= {"peftlab_speedup": speedup, "speedup_rounds": ratios, "speedup_spread": spread,
                      "target": TARGETS[name], "speed_verdict": verdict, "speed_met": verdict == "met",
                      f"peftlab_{metric}_gap": gap["mean"], f"peftlab_{metric}_gap_interval": [gap["low"], gap["high"]],
                      "accuracy_met": equal}
    return out


def speed_verdict(median: float, low: float, target: float) -> str:
    """"met" only where the 95 % interval of the per-round speed-ups clears the target; a median above the target
    whose interval holds it is "within noise"; a single round (no interval) is never "met"."""
    if median < target:
        return "not met"
    return "met" if low >= target else "within noise"  # NaN (one round): False


def run_precision(run: dict) -> str:
    """fp32 or bf16: the peak a run's MFU is measured against."""
    precision = (run.get("settings") or run.get("speed") or {}).get("precision", "fp32")
    return "bf16" if precision.startswith("bf16") else "fp32"


def run_mfu(run: dict, limit_record: dict) -> float:
    """Model FLOPs/s of a run (FLOPs per training example × samples/s) ÷ the peak of the precision it trained in."""
    return flops.mfu(limit_record["flops_per_example"] * run["samples_per_second"], 1.0,
                     limit_record["peak"][run_precision(run)])


def bench(args, command: str) -> int:
    console = Console(stderr=True, soft_wrap=True)
    check(args.repeats >= 1, f"--repeats {args.repeats}: use 1 or more")
    limits = [f"data.train_limit={args.train_limit}"] if args.train_limit else []
    limits += [f"data.eval_limit={args.eval_limit}"] if args.eval_limit else []
    overrides = args.overrides + limits
    recipe = load_recipe(args.recipe, overrides)  # every check before anything runs
    check(recipe.model.task == "classification", f"{args.recipe}: the bench compares sequence classification "
                                                 f"recipes; model.task={recipe.model.task!r} is not one")
    data_stage.preflight(recipe.data, data_stage.data_dir(args.data_dir), get_task(recipe.model.task).columns(recipe))
    seeds = args.seeds or [recipe.train.seed]
    rounds = [(seed, repeat) for repeat in range(1, args.repeats + 1) for seed in seeds]
    console.print("the limit: matmul peak and model FLOPs …")
    limit_record = spawn("limit", args, overrides)
    runs = []
    for number, (seed, repeat) in enumerate(rounds, 1):
        for position, name in enumerate(round_order(number - 1)):
            console.print(f"round {number}/{len(rounds)} (seed {seed}): {name} …", highlight=False)
            result = spawn(name, args, overrides + [f"train.seed={seed}"])
            runs.append(result | {"approach": name, "seed": seed, "repeat": repeat, "round": number,
                                  "position": position + 1})
            console.print(f"  {result['samples_per_second']:.1f} samples/s, accuracy "
                          f"{result['task_metrics']['accuracy']:.4f}, {result['wall_seconds']:.0f} s", highlight=False)
    record = {"command": command, "recipe": recipe_to_dict(recipe), "environment": measure.environment(),
              "seeds": seeds, "repeats": args.repeats, "limit": limit_record, "runs": runs,
              "summary": summarize(runs, "accuracy", limit_record)}
    small = args.overrides + [f"data.train_limit={args.ablation_train_limit}", "data.eval_limit=384"]
    if args.ablation:
        console.print("ablation: peftlab with each speed setting off …")
        record["ablation"] = {"overrides": small, **spawn("ablation", args, small)}
    if args.profile:
        console.print("profile: one peftlab run with stage timers …")
        record["profile"] = {"overrides": small, **spawn("profile", args, small)}
    args.out.mkdir(parents=True, exist_ok=True)
    rundir.write_json(args.out / "bench_throughput.json", record)
    rundir.write_atomic(args.out / "bench_throughput.md", render(record))
    console.print(f"report: {args.out / 'bench_throughput.md'}")
    return 0


# ------------------------------------------------------------------------------------------------- report

def _ratio(value: float) -> str:
    return f"{value:.2f}×"


def _interval(values: list[float], scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    low, high = (scale * v for v in values)
    return "—" if low != low else f"[{low:.{digits}f}, {high:.{digits}f}]{unit}"  # nan: one seed or round


def _settings(run: dict, key: str) -> str:
    return str((run.get("settings") or run.get("speed") or {}).get(key, "?"))


def _limit_section(limit_record: dict) -> str:
    peak, counted = limit_record["peak"], limit_record["model_flops"]
    return ("## The limit: model FLOPs utilisation\n\n"
            f"Sustained matmul throughput of this machine ({peak['device']}, {peak['size']} × {peak['size']} "
            f"products, median of timed repeats, `peftlab/flops.py`): **fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, "
            f"bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s**. Model FLOPs of training, counted with torch's "
            "FlopCounterMode on real steps of the recipe's model: the matmuls of forward and backward (adapters "
            "included; a frozen weight's backward only where a gradient passes through it; attention's seq² "
            "products), each example at its real length: "
            f"{limit_record['flops_per_example'] / 1e9:.3f} GFLOP per training example on average "
            f"({limit_record['train_examples']:,} examples; per example of L tokens "
            f"{counted['train']['constant']:.3g} + {counted['train']['linear']:.3g}·L + "
            f"{counted['train']['quadratic']:.3g}·L²). MFU = FLOPs per example × samples/s ÷ the peak of the "
            "precision the run trained in (bf16 autocast or bf16=True: the bf16 peak; else fp32). Elementwise "
            "work, the optimizer and gradient checkpointing's recomputation are not model FLOPs.")


def render(record: dict) -> str:
    """Markdown from the bench record; computes nothing beyond medians and ratios of what was measured."""
    summary, runs, env, recipe = record["summary"], record["runs"], record["environment"], record["recipe"]
    first = runs[0]
    train = recipe["train"]
    seeds = record["seeds"]
    has_mfu = "mfu" in summary["peftlab"]
    rows = []
    for name, describe in APPROACHES.items():
        s = summary[name]
        rows.append([f"**{name}**: {describe}", f"{s['samples_per_second']:.1f}", f"{s['tokens_per_second']:.0f}",
                     f"{s['train_seconds']:.1f}", f"{s['eval_seconds']:.1f}", f"{s['wall_seconds']:.0f}",
                     measure.human_bytes(s["peak_rss_bytes"]),
                     f"{100 * s['accuracy']:.2f} %", _interval(s["accuracy_interval"], 100, unit=" %"),
                     *([f"{100 * s['mfu']:.1f} %"] if has_mfu else [])])
    targets = []
    for name in TARGETS:
        s, spread = summary[name], summary[name]["speedup_spread"]
        targets.append([f"peftlab vs {name}", ", ".join(_ratio(r) for r in s["speedup_rounds"]),
                        _ratio(s["peftlab_speedup"]), f"{_ratio(spread['min'])} – {_ratio(spread['max'])}",
                        _interval([spread["low"], spread["high"]], unit="×"), f"≥ {_ratio(s['target'])}",
                        s["speed_verdict"].replace("not met", "**not met**"),
                        f"{100 * s['peftlab_accuracy_gap']:+.2f} pt",
                        _interval(s["peftlab_accuracy_gap_interval"], 100, unit=" pt"),
                        "met" if s["accuracy_met"] else "**not met**"])
    peftlab_run, best_run = first_peftlab(runs), next(r for r in runs if r["approach"] == "best_practice")
    sections = [
        f"# Training throughput: {recipe['name']} three ways",
        "Generated by `peftlab.bench`. Command:\n\n```\n" + record["command"] + "\n```",
        f"Same model ({recipe['model']['name']}, {recipe['method']['kind']} from the recipe via `building.build_model`, "
        f"model dropout {recipe['model']['dropout']}), same {first['train_examples']:,} training sentences, "
        f"validation on {first['eval_examples']:,}, batch {train['batch_size']}, lr {train['lr']}, "
        f"{first['steps']} optimizer steps ({first['epochs']:.2f} epochs), seeds {', '.join(map(str, seeds))}. "
        f"Throughput counts training steps only (the same StepTimer in all three); tokens are real (non-pad) tokens; "
        f"speed figures are medians over {len(runs) // len(APPROACHES)} round(s), one per seed"
        + (f" × {record['repeats']}" if record["repeats"] > 1 else "")
        + "; accuracy is the mean over seeds (each seed's mean over its repeats) with the 95 % Student-t interval "
        "over seeds. Round r runs the approaches in the order rotated by r (tutorial, best practice, peftlab; then "
        "best practice, peftlab, tutorial; …), each approach in its own process (peak memory is that process's "
        "RSS; wall time is the whole process: start-up, tokenization, training, evaluation, and for peftlab saving "
        "and the report).",
        "## Result\n\n" + table(["approach", "samples/s", "tokens/s", "train s", "eval s", "wall s", "peak RSS",
                                 "val. accuracy", "95 % interval", *(["MFU"] if has_mfu else [])], rows),
        "## Speed-up per round and targets\n\n"
        "Each round's speed-up is peftlab's samples/s ÷ the baseline's in the same round; a target is met where the "
        "95 % interval of the rounds' speed-ups clears it, \"within noise\" where their median reaches it but the "
        "interval holds it. The accuracy gap is peftlab's minus the baseline's, per seed, with its 95 % interval; \"equal "
        "accuracy\" means within ±0.5 pt or an interval that holds 0.\n\n"
        + table(["comparison", "per round", "median", "min – max", "95 % interval", "target", "", "accuracy gap",
                 "95 % interval", "equal accuracy"], targets),
    ]
    if "limit" in record:
        sections.append(_limit_section(record["limit"]))
    sections += [
        "## Every run\n\n" + table(["round", "order", "seed", "approach", "samples/s", "tokens/s", "train s",
                                     "eval s", "wall s", "peak RSS", "accuracy", "loss",
                                     *(["MFU"] if has_mfu else [])],
                                    [[r.get("round", "?"), r.get("position", "?"), r["seed"], r["approach"],
                                      f"{r['samples_per_second']:.1f}", f"{r['tokens_per_second']:.0f}",
                                      f"{r['train_seconds']:.1f}", f"{r['eval_seconds']:.1f}",
                                      f"{r['wall_seconds']:.0f}", measure.human_bytes(r["peak_rss_bytes"]),
                                      f"{r['task_metrics']['accuracy']:.4f}", f"{r['task_metrics']['loss']:.4f}",
                                      *([f"{100 * run_mfu(r, record['limit']):.1f} %"] if has_mfu else [])]
                                     for r in runs]),
        "## What differs between the three\n\n" + table(["", "tutorial", "best practice", "peftlab"], [
            ["padding", f"every example to {recipe['data']['max_length']}", "per batch", "per batch"],
            ["batches", "random", "Trainer's group_by_length (sorted within 50-batch groups)",
             "length buckets (peftlab/speed.py)"],
            ["precision", "float32", _settings(best_run, "precision") + " (Trainer: training and evaluation)",
             _settings(peftlab_run, "precision") + " training, float32 evaluation"],
            ["attention", "model default", _settings(best_run, "attention"), _settings(peftlab_run, "attention")],
            ["optimizer", "Trainer default", _settings(best_run, "optimizer"), _settings(peftlab_run, "optimizer")],
            ["shared by all", "the recipe's model config, incl. dropout", "", ""],
        ]),
    ]
    if "ablation" in record:
        sections.append(_ablation_section(record["ablation"]))
    if "profile" in record:
        sections.append(_profile_section(record["profile"]))
    sections.append("## Environment\n\n" + table(["item", "value"], [
        ["hardware", f"{env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} torch threads), "
                     f"GPU: {env['gpu'] or 'none'}, RAM {measure.human_bytes(env['memory_total_bytes'])}"],
        ["python / platform", f"{env['python']} / {env['platform']}"],
        ["versions", ", ".join(f"{k} {v}" for k, v in env["versions"].items())],
        ["peftlab commit", env.get("peftlab_commit")],
    ] + [[f"data md5 `{name}`", digest] for name, digest in first["data_files"].items()]))
    return "\n\n".join(sections) + "\n"


def first_peftlab(runs: list[dict]) -> dict:
    return next(r for r in runs if r["approach"] == "peftlab")


def _ablation_section(ablation: dict) -> str:
    rows, by_off = ablation["rows"], {}
    for row in rows:
        by_off.setdefault(row["off"], []).append(row)
    all_on = statistics.median(r["samples_per_second"] for r in by_off[None])
    lines = []
    for off, mine in by_off.items():
        median = statistics.median(r["samples_per_second"] for r in mine)
        lines.append(["all settings on" if off is None else f"without {off}",
                      ", ".join(f"{r['samples_per_second']:.1f}" for r in mine), f"{median:.1f}",
                      "—" if off is None else _ratio(all_on / median),
                      ", ".join(f"{r['eval_seconds']:.2f}" for r in mine),
                      ", ".join(f"{r['task_metrics']['accuracy']:.4f}" for r in mine)])
    first = rows[0]
    return ("## Effect of each speed setting (ablation)\n\n"
            f"peftlab runs in one process (after one warm-up run), `PEFTLAB_DISABLE=<setting>` switching one setting "
            f"off at a time, rounds alternating; {first['train_examples']:,} training sentences ({first['steps']} "
            f"steps), validation on {first['eval_examples']} (overrides: `{' '.join(ablation['overrides'])}`). "
            "\"gain\" = training samples/s with all settings on ÷ without this one; eval_by_length acts on the "
            "evaluation time instead.\n\n"
            + table(["variant", "samples/s per round", "median", "gain", "evaluation s per round",
                     "accuracy per round"], lines))


def _profile_section(profiled: dict) -> str:
    phases, total, steps = profiled["phases"], profiled["total_seconds"], profiled["run"]["steps"]
    rows = [[phase, f"{p['seconds']:.2f}", f"{100 * p['seconds'] / total:.1f} %", p["calls"],
             f"{1000 * p['seconds'] / p['calls']:.1f}"]
            for phase, p in sorted(phases.items(), key=lambda kv: -kv[1]["seconds"])]
    return ("## Where the time goes (one peftlab run, stage timers)\n\n"
            f"`peftlab/phases.py` timers around each stage of one `peftlab.run` ({profiled['run']['train_examples']:,} "
            f"training sentences, {steps} steps, overrides `{' '.join(profiled['overrides'])}`); each stage counts "
            f"its own time, evaluation and saving as wholes. Whole run {total:.1f} s.\n\n"
            + table(["stage", "seconds", "share", "calls", "ms per call"], rows))

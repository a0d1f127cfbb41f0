"""Training memory of the GSM8K recipes under --budget, and the speed cost of each memory lever.

    python benchmarks/memory_budget.py [--budgets 3GiB 1.5GiB 1GiB] [--steps 6] [--out reports]

Every measurement is one `python -m peftlab.run` process (clean peak memory), one at a time: run it alone on the
machine, it is also a timing. Part 1 runs full FT, LoRA and QLoRA (recipes/{full,lora,qlora}_gsm8k.py) with the
recipes' default levers and then under each budget: the levers --budget chose, the plan, and the measured live-tensor
and RSS training peaks (metrics.json `memory`); a recipe the plan says cannot fit is a row "does not fit" with the
plan's figure. Part 2 trains LoRA with one lever changed at a time and compares samples/s and peaks. Writes
<out>/memory_budget.md and .json, built only from the runs' records.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's peftlab, whatever is installed

from peftlab import measure, rundir  # noqa: E402
from peftlab.plan import parse_size  # noqa: E402
from peftlab.run_report import table  # noqa: E402

RECIPES = ("full_gsm8k", "lora_gsm8k", "qlora_gsm8k")
# short runs: a few optimizer steps of the recipes' batch 8 on real GSM8K problems, checkpoints chosen on 16 held-out
# problems, perplexity on 16 test problems, no generation (it would measure the evaluation phase again, slowly)
SHORT = ["data.generate_split=None", "data.selection=16", "data.eval_limit=16"]
# Part 2: LoRA with one lever changed from the recipe's defaults ("auto" checkpointing and per-step trimming as this
# machine resolves them, micro-batch = batch, label-only logits, freed memory returned to the OS between phases)
LEVER_VARIANTS = {
    "defaults": ([], {}),
    # both, whichever the defaults' "auto" chose on this machine
    "gradient checkpointing on": (["train.gradient_checkpointing=True"], {}),
    "gradient checkpointing off": (["train.gradient_checkpointing=False"], {}),
    "full-vocabulary logits": ([], {"PEFTLAB_DISABLE": "labelled_logits"}),
    "freed memory returned after every step": (["train.trim_memory=True"], {}),
    "glibc allocator untouched": ([], {"PEFTLAB_DISABLE": "allocator"}),
}


def run(recipe: str, sets: list[str], env: dict, budget: str | None, runs_dir: Path) -> dict:
    command = [sys.executable, "-m", "peftlab.run", f"recipes/{recipe}.py", "--runs-dir", str(runs_dir),
               "--reports-dir", ""]
    command += [a for s in sets for a in ("--set", s)] + (["--budget", budget] if budget else [])
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=os.environ | env, capture_output=True, text=True)
    shown = " ".join(f"{k}={v}" for k, v in env.items()) + " " + shlex.join(["python", *command[1:]])
    result = {"recipe": recipe, "budget": budget, "command": shown.strip(), "returncode": proc.returncode,
              "seconds": time.perf_counter() - started}
    runs = sorted(runs_dir.glob(f"{recipe}-*"))
    if proc.returncode == 0 and runs:
        metrics = rundir.read_json(runs[-1] / "metrics.json")
        environment = rundir.read_json(runs[-1] / "environment.json")
        return result | {"run": str(runs[-1]), "memory": metrics["memory"], "levers": environment["levers"],
                         "load_average": [environment.get("load_average_at_start"), metrics.get("load_average_at_end")],
                         "samples_per_second": metrics["train_samples_per_second"],
                         "perplexity": metrics["task_metrics"].get("perplexity"), "environment": environment}
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith("error:")]
    return result | {"error": lines[-1] if lines else (proc.stderr.strip().splitlines() or ["no output"])[-1]}


def gib(n) -> str:
    return measure.human_bytes(n) if n else "n/a"


def rss_cell(memory: dict) -> str:
    """The training RSS with the largest batch (rows x sequence) of the steps it was measured over."""
    rss, batch = memory["train_peak_rss_bytes"], memory.get("train_rss_largest_batch") or {}
    return f"{gib(rss)} ({batch['tokens'] // batch['sequence']} × {batch['sequence']})" if rss and batch.get(
        "tokens") else gib(rss)


def budget_rows(results: list[dict]) -> list[list]:
    rows = []
    for r in results:
        budget = r["budget"] or "none (recipe defaults)"
        if "error" in r:
            rows.append([r["recipe"], budget, "does not fit" if "does not fit" in r["error"] else "failed",
                         r["error"].removeprefix("error: "), "", "", "", "", ""])
            continue
        m, levers = r["memory"], r["levers"]
        fits = "yes" if not r["budget"] or (m["train_peak_bytes"] or 0) <= parse_size(r["budget"]) else "**no**"
        rows.append([r["recipe"], budget, f"checkpointing {'on' if levers.get('gradient_checkpointing') else 'off'}, "
                     f"micro-batch {levers.get('micro_batch_size')}", gib((m.get("model_state_bytes") or {}).get("total")),
                     gib(m.get("predicted_train_peak_bytes")), gib(m["train_peak_bytes"]), fits, rss_cell(m),
                     f"{r['samples_per_second']:.2f}"])
    return rows


def lever_rows(results: list[tuple[str, list[dict]]]) -> list[list]:
    """One row per setting: samples/s as the mean and range over its repeats, and its ratio to the defaults'."""
    def speeds(runs):
        return [r["samples_per_second"] for r in runs if "error" not in r]

    base = statistics.fmean(speeds(results[0][1]) or [0])
    rows = []
    for name, runs in results:
        failed = [r for r in runs if "error" in r]
        if failed:
            rows.append([name, "failed: " + failed[0]["error"], "", "", "", "", ""])
            continue
        m, speed = runs[0]["memory"], speeds(runs)
        rows.append([name, f"{statistics.fmean(speed):.3f} ({min(speed):.3f}-{max(speed):.3f})",
                     f"{statistics.fmean(speed) / base:.2f}×" if base else "", gib(m["train_peak_bytes"]),
                     rss_cell(m), gib(m["eval_peak_rss_bytes"]), f"{runs[0]['perplexity']:.4f}"])
    return rows


def _load(record: dict) -> str:
    """Above the core count, other work shared the CPU: samples/s is slower than an idle machine's."""
    loads = [x for r in record["budgets"] + [r for _, runs in record["levers"] for r in runs]
             for x in r.get("load_average", []) if x is not None]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "not recorded"


def environment_rows(record: dict, *extra: list) -> list[list]:
    """The environment table of a report built from peftlab runs: the first run's machine, versions and commit, the
    `extra` rows, seed, wall time and data hashes."""
    env = record["environment"]
    return [["hardware", f"{env['cpu']} ({env['cpu_count']} cores), GPU: {env['gpu'] or 'none'}"],
            ["versions", ", ".join(f"{k} {val}" for k, val in env["versions"].items() if val)],
            ["peftlab commit", env.get("peftlab_commit")], *extra, ["seed", 0],
            ["wall time", f"{record['wall_seconds'] / 60:.1f} min"],
            *[[f"data md5 `{name}`", digest] for name, digest in record["data_files"].items()]]


def write_report(record: dict, runs: list[dict], out: Path, name: str, render) -> None:
    """<out>/<name>.json and .md; the runs' own environment copies and temporary folders are left out."""
    for r in runs:
        r.pop("environment", None)
        r.pop("run", None)  # temporary folders, gone after the run
    out.mkdir(parents=True, exist_ok=True)
    rundir.write_json(out / f"{name}.json", record)
    (out / f"{name}.md").write_text(render(record))
    print(f"report: {out / name}.md")


def render(record: dict) -> str:
    return "\n\n".join([
        "# Memory under a budget: SmolLM2-135M-Instruct on GSM8K",
        "Generated by `benchmarks/memory_budget.py` from the run records below. Command:\n\n```\n"
        + record["command"] + "\n```",
        f"Each row is one `python -m peftlab.run` process, one at a time, {record['steps']} optimizer steps of the "
        "recipe's batch of 8 real GSM8K problems (seed 0, max length 384), checkpoints chosen on 16 held-out problems, "
        "no generation. *Model state* is weights as stored + gradients + optimizer state (what a method changes "
        "most directly); *plan* is the prediction made before training (`predicted_train_peak_bytes`); *training "
        "peak* is the peak of live tensor bytes during training steps (exact, see peftlab/memory.py); *training RSS* "
        "the process's peak resident memory during the training steps the live-tensor profiler did not watch (its "
        "event buffers are not training's memory), with the largest batch among them (rows × tokens): smaller than "
        "the live peak's where that batch was profiled; n/a where every step was. `--budget` chooses the levers so the plan "
        "fits; a recipe that cannot fit even at micro-batch 1 with checkpointing stops before training.",
        "## Recipes under each budget\n\n" + table(
            ["recipe", "budget", "levers chosen", "model state", "plan", "training peak (live)", "peak within budget",
             "training RSS", "samples/s"], budget_rows(record["budgets"])),
        "## Speed cost of each lever\n\nNot measured in this run (--skip-levers)." if not record["levers"] else
        "## Speed cost of each lever (LoRA, one lever changed from the defaults)\n\n"
        f"Each setting ran {record['lever_repeats']} times, {record['lever_steps']} optimizer steps each, the "
        "settings in a rotated order every repeat so that drift hits all alike; samples/s is the mean (range) over "
        "the repeats, peaks and perplexity are the first repeat's.\n\n" + table(
            ["setting", "samples/s", "speed vs defaults", "training peak (live)", "training RSS", "evaluation RSS",
             "perplexity (16 test problems)"],
            lever_rows(record["levers"])),
        "## Environment\n\n" + table(["item", "value"], environment_rows(
            record, ["machine load (1-min average, runs' start and end)", _load(record)])),
        "## Runs\n\n" + table(["recipe", "budget / setting", "command"],
                              [[r["recipe"], r["budget"] or "", f"`{r['command']}`"] for r in record["budgets"]]
                              + [[runs[0]["recipe"], name, f"`{runs[0]['command']}`"] for name, runs in record["levers"]]),
    ]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", nargs="+", default=["1.5GiB", "0.75GiB"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=REPO / "reports")
    parser.add_argument("--skip-levers", action="store_true", help="only part 1 (the recipes under each budget)")
    parser.add_argument("--lever-steps", type=int, default=4, help="optimizer steps of each part 2 run")
    parser.add_argument("--lever-repeats", type=int, default=2, help="runs of each part 2 setting")
    parser.add_argument("--from-record", type=Path, help="render the report again from this memory_budget.json, no runs")
    args = parser.parse_args()
    if args.from_record:  # the record keeps the command that made its runs
        (args.out / "memory_budget.md").write_text(render(rundir.read_json(args.from_record)))
        return 0
    short = SHORT + [f"train.max_steps={args.steps}", f"data.train_limit={8 * args.steps}"]
    started = time.perf_counter()
    budgets = []
    with tempfile.TemporaryDirectory(prefix="memory_budget-") as tmp:
        for budget in [None, *args.budgets]:
            for recipe in RECIPES:
                budgets.append(run(recipe, short, {}, budget, Path(tmp) / f"{recipe}-{budget}"))
                print(json.dumps({k: budgets[-1].get(k) for k in ("recipe", "budget", "error")}), flush=True)
        lever_short = SHORT + [f"train.max_steps={args.lever_steps}", f"data.train_limit={8 * args.lever_steps}"]
        names = list(LEVER_VARIANTS)
        levers = {name: [] for name in names}
        for repeat in range(0 if args.skip_levers else args.lever_repeats):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                sets, env = LEVER_VARIANTS[name]
                levers[name].append(run("lora_gsm8k", lever_short + sets, env, None,
                                        Path(tmp) / f"lever-{names.index(name)}-{repeat}"))
                print(name, levers[name][-1].get("samples_per_second"), levers[name][-1].get("error"), flush=True)
        levers = [(name, runs) for name, runs in levers.items() if runs]
    first = next(r for r in budgets if "environment" in r)["environment"]
    record = {"command": shlex.join(["python", "benchmarks/memory_budget.py", *sys.argv[1:]]), "steps": args.steps,
              "lever_steps": args.lever_steps, "lever_repeats": args.lever_repeats,
              "environment": first, "data_files": first["data"]["files"], "budgets": budgets, "levers": levers,
              "wall_seconds": time.perf_counter() - started}
    write_report(record, budgets + [r for _, runs in levers for r in runs], args.out, "memory_budget", render)
    return 0


if __name__ == "__main__":
    sys.exit(main())

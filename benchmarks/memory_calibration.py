"""The memory plan against the measured live-tensor and RSS training peaks, for every variant of the comparisons.

    flock /tmp/peftlab-cpu.lock python benchmarks/memory_calibration.py [--steps 2] [--json FILE] \
        [recipes/compare_sst2.py recipes/compare_gsm8k.py]

Each variant trains --steps optimizer steps (with its comparison's overrides) in a process of its own, one after the
other, every step on the same batch of its longest training examples; the plan is evaluated at that batch. The live
peak comes from the first two steps (the profiler watches them), the training RSS from the others (peftlab/memory.py:
the profiler's buffers are not training memory), so --steps is at least 3. Prints a table; --json keeps the raw
figures (re-read with --from-json to re-evaluate the plan without training again).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's peftlab, whatever is installed


def measure_one(recipe_path: str, overrides: list[str], steps: int) -> dict:
    """Train a few steps of one variant in this process; its measured memory and the recipe's plan inputs."""
    from torch.utils.data import SequentialSampler

    from peftlab import memory, plan
    from peftlab import recipe as recipe_mod
    from peftlab.building import build_model, prepare_inputs
    from peftlab.data import data_dir
    from peftlab.pipeline import quiet_libraries
    from peftlab.tasks import metrics_for
    from peftlab.training import build_trainer

    quiet_libraries()
    recipe = recipe_mod.load_recipe(recipe_path, [*overrides, f"train.max_steps={steps}"])
    inputs = prepare_inputs(recipe, data_dir(None))
    # the longest batch the recipe can see (what the plan is for), every step: the steps after the profiled first two
    # measure the RSS of the same batch
    longest = inputs.train.sort("length", reverse=True)
    inputs.train = longest.select(list(range(recipe.train.batch_size)) * steps)
    inputs.selection = inputs.selection.select(range(16))  # evaluation is not what is calibrated here
    runtime = plan.runtime_rss(recipe)  # where a run makes its plan: data tokenized, no model yet
    meter = memory.MemoryMeter()
    model = build_model(recipe, inputs.task, inputs.resolved, inputs.labels)
    out = Path("/tmp") / f"memcal-{os.getpid()}"
    trainer = build_trainer(recipe, inputs.task, model, inputs.tokenizer, inputs.train, inputs.selection, out,
                            metrics_for(inputs.task, inputs.selection, inputs.splits.selection, inputs.labels, recipe),
                            inputs.labels, meter)
    trainer._get_train_sampler = lambda *args: SequentialSampler(inputs.train)  # the same batch every step
    trainer.train()
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return {"recipe": recipe_path, "overrides": overrides, "name": recipe.name, "runtime_rss_bytes": runtime,
            **meter.record()}


def evaluate_plan(row: dict) -> dict:
    from peftlab import plan
    from peftlab import recipe as recipe_mod
    from peftlab.building import prepare_inputs
    from peftlab.data import data_dir

    recipe = recipe_mod.load_recipe(row["recipe"], row["overrides"])
    inputs = prepare_inputs(recipe, data_dir(None))
    batch = row["largest_batch"]
    # the RSS plan starts from the variant's own process before its model loaded, where measured, not this one
    return plan.predict(recipe, inputs.task, inputs.resolved, inputs.labels, batch["sequence"],
                        batch=batch["tokens"] // batch["sequence"], runtime=row.get("runtime_rss_bytes"))


def table(rows: list[dict]) -> str:
    from peftlab.measure import human_bytes

    lines = ["| variant | batch × seq | model state | live peak | plan (error) | train RSS | plan RSS (error) | eval RSS |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["plan"]
        live, rss = r["train_peak_bytes"], r["train_peak_rss_bytes"]
        pl, pr = p["predicted_train_peak_bytes"], p["predicted_train_peak_rss_bytes"]
        b = r["largest_batch"]
        lines.append(f"| {r['name']} | {b['tokens'] // b['sequence']} × {b['sequence']} "
                     f"| {human_bytes(r['model_state_bytes']['total'])} | {human_bytes(live)} "
                     f"| {human_bytes(pl)} ({100 * (pl - live) / live:+.1f} %) | {human_bytes(rss)} "
                     f"| {human_bytes(pr)} {f'({100 * (pr - rss) / rss:+.1f} %)' if rss else ''} "
                     f"| {human_bytes(r['eval_peak_rss_bytes'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("comparisons", nargs="*", default=["recipes/compare_sst2.py", "recipes/compare_gsm8k.py"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--from-json", type=Path, help="re-evaluate the plan on earlier measurements")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # RECIPE [OVERRIDE ...]: the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one[0], args.one[1:], args.steps)))
        return
    if args.from_json:
        rows = json.loads(args.from_json.read_text())
    else:
        from peftlab.comparison import load_comparison

        rows = []
        for path in args.comparisons:
            comparison, _ = load_comparison(Path(path))
            for name in comparison.recipes:
                recipe = str(Path(path).parent / name)
                done = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--one", recipe,
                                       *comparison.overrides], capture_output=True, text=True, cwd=REPO, check=False)
                if done.returncode:
                    print(f"{recipe}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                    continue
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"measured {rows[-1]['name']}", file=sys.stderr, flush=True)
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))
    for row in rows:
        row["plan"] = evaluate_plan(row)
    print(table(rows))


if __name__ == "__main__":
    main()

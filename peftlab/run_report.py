"""Markdown reports built only from what a run recorded on disk; this module computes no new numbers
(python -m peftlab.report RUN_DIR rebuilds a run's report without training)."""

from __future__ import annotations

import shutil
from pathlib import Path

from . import rundir
from .measure import human_bytes

METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "loss": "loss"}


def load_record(run: Path) -> dict:
    run = rundir.require_finished(run)
    return {name: rundir.read_json(run / f"{name}.json")
            for name in ("recipe", "metrics", "environment", "log_history")} | {"dir": str(run)}


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _loss_curve(log_history: list[dict], max_rows: int = 12) -> str:
    train = [e for e in log_history if "loss" in e and "eval_loss" not in e]
    if not train:
        return "_no training loss logged_"
    stride = max(1, len(train) // max_rows)
    picked = train[::stride]
    if picked[-1] is not train[-1]:
        picked.append(train[-1])
    return table(["step", "epoch", "train loss", "learning rate"],
                  [[e["step"], f"{e.get('epoch', 0):.2f}", f"{e['loss']:.4f}", f"{e.get('learning_rate', 0):.2e}"]
                   for e in picked])


PER_TYPE = ("precision", "recall", "f1", "support")  # entity recognition: `<measure>_<type>` per entity type


def _entity_types(metrics: dict) -> list[str]:
    return [k[len("support_"):] for k in metrics if k.startswith("support_")]


def _per_type_keys(metrics: dict) -> set[str]:
    return {f"{m}_{t}" for t in _entity_types(metrics) for m in PER_TYPE}


def _entity_table(metrics: dict) -> str:
    """Per-entity-type scores, as the run recorded them (token classification only)."""
    return table(["entity type"] + list(PER_TYPE),
                 [[t] + [_fmt(metrics.get(f"{m}_{t}")) for m in PER_TYPE] for t in _entity_types(metrics)])


def _evaluations(log_history: list[dict]) -> str:
    evals = [e for e in log_history if "eval_loss" in e]
    per_type = {f"eval_{k}" for k in _per_type_keys({k[5:]: v for k, v in evals[0].items()})} if evals else set()
    keys = [k for k in evals[0] if k.startswith("eval_") and k not in per_type and k not in (
        "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")] if evals else []
    return table(["step", "epoch"] + [k[5:] for k in keys],
                  [[e["step"], f"{e.get('epoch', 0):.2f}"] + [_fmt(e[k]) for k in keys] for e in evals])


def _quant_rows(storage: dict | None) -> list[list]:
    if not storage:
        return []
    return [["quantized weights", f"{storage['quantized_params']:,} params in {human_bytes(storage['quantized_bytes'])} "
                                  f"= {storage['bits_per_param']:.3f} bits/param (values + scales)"]]


def _head_text(head: dict | None) -> str:
    if not head:
        return "the model's own (linear)"
    return f"{head['kind']}(" + ", ".join(f"{k}={v!r}" for k, v in head.items() if k != "kind") + ")"


def _fenced(text: str) -> str:
    return "```\n" + text.replace("```", "` ` `") + "\n```"


def _before_after(m: dict) -> str:
    """Base model before training vs the trained model (tasks that record `before`, e.g. causal_lm)."""
    before, after = m["before"], m["task_metrics"]
    rows = [[METRIC_NAMES.get(k, k), _fmt(before[k]), _fmt(after[k])] for k in before if k in after]
    text = ("## Before and after training\n\nThe base model as loaded (quantized if the recipe quantizes it), before "
            "any adapter exists, against the trained model: loss and perplexity on the validation split, exact match "
            "on the generation prompts.\n\n" + table(["metric", "base model", "trained"], rows))
    gen = m.get("generation")
    if not gen:
        return text
    text += "\n\n## Generation\n\n" + table(["measure", "base model", "trained"], [
        ["prompts", f"the first {gen['prompts']} of split `{gen['split']}`", ""],
        ["decoding", f"{gen['decoding']}, at most {gen['max_new_tokens']} new tokens, batches of {gen['batch_size']} "
                     "(left padding)", ""],
        ["tokens generated", gen["new_tokens_before"], gen["new_tokens_after"]],
        ["generation time", f"{gen['seconds_before']:.1f} s", f"{gen['seconds_after']:.1f} s"],
        ["generation speed", f"{gen['tokens_per_second_before']:.1f} tokens/s",
         f"{gen['tokens_per_second_after']:.1f} tokens/s"],
    ]) + ("\n\nFinal answer: the first number after the last `####`, else the last number in the text, compared by "
          "value with the reference's `####` number. Every generation is in the run's `generations.json`.")
    for i, sample in enumerate(gen["samples"], 1):
        verdict = {True: "correct", False: "wrong"}
        text += (f"\n\n### Sample {i} (reference answer {sample['reference']})\n\n{_fenced(sample['question'])}"
                 f"\n\nBase model (answer {sample['answer_before']}, {verdict[sample['correct_before']]}):\n\n"
                 f"{_fenced(sample['generation_before'])}\n\nTrained (answer {sample['answer']}, "
                 f"{verdict[sample['correct']]}):\n\n{_fenced(sample['generation'])}")
    return text


def render(record: dict) -> str:
    recipe, m, env = record["recipe"], record["metrics"], record["environment"]
    method = recipe["method"]
    quant = recipe.get("quant")
    per_type = _per_type_keys(m["task_metrics"])
    task_rows = [[METRIC_NAMES.get(k, k), _fmt(v)] for k, v in m["task_metrics"].items() if k not in per_type]
    method_args = ", ".join(f"{k}={v!r}" for k, v in method.items() if k != "kind")
    quant_text = "none (full precision)" if not quant else ", ".join(f"{k}={v!r}" for k, v in quant.items())
    data = env["data"]
    files = data.get("files", {})
    sections = [
        f"# {recipe['name']}: {method['kind']} on {recipe['data']['name']} with {recipe['model']['name']}",
        f"Generated by peftlab from run `{Path(record['dir']).name}`. Command:\n\n```\n{env['command']}\n```"
        + "".join(f"\n\nResumed from step {r['from_step']} ({r['time']}, {r['host']}):\n\n```\n{r['command']}\n```"
                  for r in env.get("resumed", [])),
        "## Result\n\n" + table(["metric (validation)" if "before" not in m else
                                   "metric (validation; exact match: generation prompts)", "value"], task_rows)
        + ("\n\nPer entity type (support: entities in the evaluation split):\n\n" + _entity_table(m["task_metrics"])
           if per_type else ""),
    ] + ([_before_after(m)] if "before" in m else []) + [
        "## Cost\n\n" + table(["measure", "value"], [
            ["trainable parameters", f"{m['trainable_params']:,} ({m['trainable_percent']:.3f} % of {m['total_params']:,})"],
            ["train time (steps only, no evaluation)", f"{m['train_seconds']:.1f} s"],
            ["wall time of the whole run" if not env.get("resumed") else "wall time of the last (resumed) process",
             f"{m['wall_seconds']:.1f} s"],
            ["throughput", f"{m['train_samples_per_second']:.1f} samples/s, {m['train_tokens_per_second']:.0f} tokens/s"],
            ["optimizer steps", f"{m['steps']} (batch {recipe['train']['batch_size']}, {m['epochs']:.2f} epochs)"],
            ["peak memory (process RSS)", human_bytes(m["peak_rss_bytes"]) + (
                " (main); per process: " + ", ".join(map(human_bytes, m["peak_rss_bytes_per_process"]))
                if "peak_rss_bytes_per_process" in m else "")],
            ["peak GPU memory allocated", human_bytes(m.get("cuda_peak_allocated_bytes"))],
            ["saved weights on disk", human_bytes(m["saved_bytes"])],
        ] + _quant_rows(m.get("quantized_storage"))),
        "## Setup\n\n" + table(["part", "value"], [
            ["model", f"{recipe['model']['name']} (loaded from {env['model']['source']}: `{env['model']['path']}`)"],
            ["task", recipe["model"]["task"] + (f", labels {m['labels']}" if m.get("labels") else "")],
            ["task head", _head_text(recipe["model"].get("head"))],
            ["method", f"{method['kind']}({method_args})"],
            ["quantization", quant_text],
            ["data", f"{recipe['data']['name']} from {data['source']}: train {data['train_examples']:,} examples, "
                     f"validation {data['eval_examples']:,}"],
            ["training", ", ".join(f"{k}={v}" for k, v in recipe["train"].items())],
            ["processes; speed settings", f"{env.get('processes', 1)}; " + ", ".join(
                f"{k} {v}" for k, v in env.get("speed", {}).items())],
            ["seed", recipe["train"]["seed"]],
        ]),
        "## Evaluations during training\n\n" + _evaluations(record["log_history"]),
        "## Training loss\n\n" + _loss_curve(record["log_history"]),
        "## Environment\n\n" + table(["item", "value"], [
            ["hardware", f"{env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} torch threads), "
                         f"GPU: {env['gpu'] or 'none'}, RAM {human_bytes(env['memory_total_bytes'])}"],
            ["python / platform", f"{env['python']} / {env['platform']}"],
            ["versions", ", ".join(f"{k} {v}" for k, v in env["versions"].items())],
            ["peftlab commit", env.get("peftlab_commit")],
            ["base weights sha256", env["model"].get("fingerprint")],
        ] + ([["base weights converted from", env["model"]["origin"]]] if env["model"].get("origin") else []) + [[f"data md5 `{name}`", digest] for name, digest in files.items()]),
    ]
    return "\n\n".join(sections) + "\n"


def write(run: Path, reports_dir: Path | None) -> Path:
    """Render the run's report into the run directory and copy it (+ metrics.json) to reports_dir."""
    record = load_record(run)
    text = render(record)
    rundir.write_atomic(Path(run) / "report.md", text)
    if reports_dir is not None:
        name = record["recipe"]["name"]
        rundir.write_atomic(reports_dir / f"{name}.md", text)
        shutil.copyfile(Path(run) / "metrics.json", reports_dir / f".{name}.json.tmp")
        (reports_dir / f".{name}.json.tmp").replace(reports_dir / f"{name}.json")
    return Path(run) / "report.md"

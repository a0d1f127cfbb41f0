"""Markdown reports built only from what a run recorded on disk: its figures, and intervals and error analysis
computed from its per-example records (predictions.jsonl); python -m peftlab.report RUN_DIR rebuilds a run's report
without training."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from . import levers, rundir
from .data import title
from .measure import human_bytes
from .memory import compared_plan
from .metrics import answer_f1, entity_spans
from .tasks import get_task

METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "loss": "loss"}


def load_record(run: Path, finished: bool = True) -> dict:
    """finished=False: the run writing its own report, before it marks itself finished."""
    run = rundir.require_finished(run) if finished else Path(run)
    return {name: rundir.read_json(run / f"{name}.json")
            for name in ("recipe", "metrics", "environment", "log_history")} | {"dir": str(run),
                                                                                 "predictions": _predictions(run)}


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


def _evaluations(log_history: list[dict]) -> str:
    evals = [e for e in log_history if "eval_loss" in e]
    per_type = {f"eval_{k}" for k in _per_type_keys({k[5:]: v for k, v in evals[0].items()})} if evals else set()
    keys = [k for k in evals[0] if k.startswith("eval_") and k not in per_type and k not in (
        "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")] if evals else []
    return table(["step", "epoch"] + [k[5:] for k in keys],
                  [[e["step"], f"{e.get('epoch', 0):.2f}"] + [_fmt(e[k]) for k in keys] for e in evals])


def _batch(plan: dict) -> str:
    return f" ({plan['batch']} x {plan['sequence']} tokens)" if plan.get("batch") else ""


def _rss_label(memory: dict) -> str:
    batch = memory.get("train_rss_largest_batch")  # absent from records made while the profiler's steps counted
    if not batch:
        return "training peak, process RSS"
    shape = f", largest {batch['tokens'] // batch['sequence']} x {batch['sequence']} tokens" if batch["tokens"] else ""
    return f"training peak, process RSS (steps the profiler did not watch{shape})"


def _memory_rows(memory: dict | None) -> list[list[str]]:
    """The run's "memory" object (peftlab/memory.py says how each figure is measured)."""
    if not memory:
        return []
    state = memory.get("model_state_bytes") or {}
    error = memory.get("plan_error_percent")
    rss_error = memory.get("plan_rss_error_percent")
    at = compared_plan(memory)
    return [
        ["model state (weights as stored + gradients + optimizer)",
         (f"{human_bytes(state.get('total'))} = {human_bytes(state.get('weights'))} + "
          f"{human_bytes(state.get('gradients'))} + {human_bytes(state.get('optimizer'))}")],
        ["training peak, live tensors", (f"{human_bytes(memory.get('train_peak_bytes'))} "
                                         f"({memory.get('train_peak_measured_by')}; steps {memory.get('profiled_steps')})")],
        ["plan of the training peak, worst batch (before training)", human_bytes(memory.get("predicted_train_peak_bytes"))],
        [f"plan at the largest batch trained{_batch(at)}", human_bytes(at.get("train_peak_bytes"))
         + (f" (error {error:+.1f} %)" if error is not None else "")],
        [_rss_label(memory), human_bytes(memory.get("train_peak_rss_bytes"))],
        ["plan of the training RSS at that batch", human_bytes(at.get("train_peak_rss_bytes"))
         + (f" (error {rss_error:+.1f} %)" if rss_error is not None else "")],
        *([["steps the profiler watched, process RSS (its event buffers included)",
            human_bytes(memory["profiled_steps_peak_rss_bytes"])]] if memory.get("profiled_steps_peak_rss_bytes") else []),
        ["evaluation peak, process RSS", (f"{human_bytes(memory.get('eval_peak_rss_bytes'))} "
                                          f"({memory.get('rss_measured_by')})")],
    ]


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
            "any adapter exists, against the trained model: loss and perplexity on the reported split, exact match "
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


# ------------------------------------------------------------------ evidence: intervals, protocol, errors, curve

BOOTSTRAP = {"n": 1000, "seed": 0}  # resamples behind every interval (peftlab/stats.py)
CURVE = "training_curve.png"
MISTAKES = 5  # most confident mistakes shown


def _predictions(run: Path) -> dict[str, list[dict]]:
    """The run's per-example records: {"reported": [...], "test": [...]} (the parts it has)."""
    return {part: rundir.read_jsonl(run / name) for part, name in rundir.PREDICTIONS.items() if (run / name).is_file()}


def _intervals(records: list[dict], task) -> dict:
    from .stats import bootstrap_ci

    return bootstrap_ci(records, task.score_predictions, **BOOTSTRAP) if records else {}


def _ci(interval) -> str:
    return f"[{interval.low:.4f}, {interval.high:.4f}]" if interval else "—"


def _protocol(p: dict) -> str:
    parts = p["parts"]
    rows = [[role, f"`{parts[part]['split']}`", f"{parts[part]['examples']:,} of {parts[part]['of']:,}"]
            for part, role in (("train", "training"), ("selection", "checkpoint selection"),
                               ("reported", "reported (scored once, after training)"), ("test", "test (scored once)"),
                               ("generation", "generation prompts")) if part in parts]
    best = "higher" if p["greater_is_better"] else "lower"
    return ("## Protocol\n\n" + table(["part", "split", "examples"], rows) +
            f"\n\nThe selection examples are held out of the training split; they and every subset are drawn with "
            f"the data seed ({p['data_seed']}), not the training seed, so every seed and method sees the same "
            f"examples. The checkpoint with the {best} selection {p['selection_metric']} of {p['evaluations']} "
            f"evaluations (step {p['selected_step']}) was kept; only it was scored on the reported split. Intervals: "
            f"95 % percentile bootstrap over the reported examples ({BOOTSTRAP['n']:,} resamples, "
            f"`predictions.jsonl`).")


def _cell(text, width: int = 100) -> str:
    """Free text in a table cell: one line, no column breaks, at most `width` characters."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[:width - 1] + "…"


def _input(record: dict) -> str:
    return _cell(record["text"] + (f" ‖ {record['text_pair']}" if "text_pair" in record else ""))


def _classification_errors(records: list[dict], labels: list[str]) -> str:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    gold, predicted = [r["gold"] for r in records], [r["prediction"] for r in records]
    matrix = confusion_matrix(gold, predicted, labels=labels)
    per_class = zip(labels, *precision_recall_fscore_support(gold, predicted, labels=labels, zero_division=0))
    mistakes = sorted((r for r in records if r["gold"] != r["prediction"]), key=lambda r: -max(r["probs"]))
    return ("Confusion matrix (rows: gold label, columns: predicted):\n\n"
            + table(["gold \\ predicted"] + labels, [[name] + list(map(int, row)) for name, row in zip(labels, matrix)])
            + "\n\n" + table(["class", "precision", "recall", "F1", "support"],
                             [[name, _fmt(float(p)), _fmt(float(r)), _fmt(float(f)), int(s)]
                              for name, p, r, f, s in per_class])
            + "\n\nMost confident mistakes:\n\n"
            + table(["id", "input", "gold", "predicted", "probability"],
                    [[r["id"], _input(r), r["gold"], r["prediction"], _fmt(max(r["probs"]))]
                     for r in mistakes[:MISTAKES]]))


def _regression_errors(records: list[dict]) -> str:
    worst = sorted(records, key=lambda r: -abs(r["prediction"] - r["gold"]))
    return "Largest errors:\n\n" + table(["id", "input", "gold", "predicted"],
                                         [[r["id"], _input(r), _fmt(r["gold"]), _fmt(r["prediction"])]
                                          for r in worst[:MISTAKES]])


def _entity_errors(records: list[dict]) -> str:
    def confidence(r):  # of the most confident wrongly tagged word
        return max(c for c, g, p in zip(r["confidence"], r["gold"], r["prediction"]) if g != p)

    def tagged(r, key):
        return _cell(" ".join(f"[{' '.join(r['words'][s:e])}]{kind}" for kind, s, e in entity_spans(r[key])) or "—")

    wrong = sorted((r for r in records if r["gold"] != r["prediction"]), key=lambda r: -confidence(r))
    return ("Most confident mistakes (sentences whose tags differ; confidence of the surest wrong tag):\n\n"
            + table(["id", "sentence", "gold entities", "predicted entities", "confidence"],
                    [[r["id"], _cell(" ".join(r["words"])), tagged(r, "gold"), tagged(r, "prediction"),
                      _fmt(confidence(r))] for r in wrong[:MISTAKES]]))


def _qa_errors(records: list[dict]) -> str:
    wrong = [r for r in records if max(answer_f1(r["prediction"], g) for g in r["gold"]) == 0]
    wrong.sort(key=lambda r: -(r["score"] if r["score"] is not None else float("-inf")))
    return ("Most confident mistakes (answers sharing no word with any reference):\n\n"
            + table(["id", "question", "references", "predicted", "span score"],
                    [[r["id"], _cell(r["question"]), _cell(" / ".join(r["gold"])), _cell(r["prediction"]),
                      _fmt(r["score"])] for r in wrong[:MISTAKES]]))


def _error_analysis(task_name: str, records: list[dict], labels: list[str]) -> str | None:
    """Where the model goes wrong on the reported split, from its records; None for tasks without one here
    (a causal LM's generations are shown with the before/after samples)."""
    section = {"classification": lambda: _classification_errors(records, labels),
               "regression": lambda: _regression_errors(records),
               "token_classification": lambda: _entity_errors(records),
               "qa": lambda: _qa_errors(records)}.get(task_name)
    return "## Error analysis (reported split)\n\n" + section() if section and records else None


def plot_training_curve(log_history: list[dict], metric: str, selected_step: int | None, path: Path) -> bool:
    """Training loss and the selection metric against step (PNG); False when nothing was logged."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "eval_loss" not in e]
    evals = [(e["step"], e[f"eval_{metric}"]) for e in log_history if f"eval_{metric}" in e]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 5))
    for ax, points, label, color in ((top, train, "training loss", "tab:blue"),
                                     (bottom, evals, f"selection {metric}", "tab:green")):
        if points:
            ax.plot(*zip(*points), marker="o" if ax is bottom else None, color=color)
        if selected_step is not None:
            ax.axvline(selected_step, color="tab:red", linestyle="--", alpha=0.6, label="selected checkpoint")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    bottom.legend(loc="best")
    bottom.set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _tracking(run: str, env: dict) -> str | None:
    """Where Trainer reported the run to (environment.json: report_to, and a resumption's where it differed)."""
    names = dict.fromkeys(env.get("report_to") or [])
    for resumed in env.get("resumed", []):
        names |= dict.fromkeys(resumed.get("report_to") or [])
    if not names:
        return None
    text = "## Tracking\n\n"
    if "tensorboard" in names:
        text += (f"TensorBoard event files: [`{rundir.TENSORBOARD}/`]({rundir.TENSORBOARD}) in the run directory. "
                 f"Open them with\n\n```\ntensorboard --logdir {shlex.quote(str(Path(run) / rundir.TENSORBOARD))}\n```\n\n")
    others = [name for name in names if name != "tensorboard"]
    if others:
        text += f"Also reported to {', '.join(others)}, as run `{Path(run).name}`."
    return text.rstrip()


def _result(m: dict, predictions: dict, task, protocol: dict | None) -> str:
    """The reported (and test) figures with their 95 % intervals; per entity type for token classification."""
    per_type = _per_type_keys(m["task_metrics"])
    parts = [("reported", m["task_metrics"])] + ([("test", m["test_metrics"])] if "test_metrics" in m else [])
    intervals = {part: _intervals(predictions.get(part, []), task) for part, _ in parts}
    split = {part: protocol["parts"][part]["split"] if protocol else part for part, _ in parts}
    header = ["metric"] + [h for part, _ in parts for h in (f"{split[part]} ({part})", "95 % CI")]
    rows = [[METRIC_NAMES.get(k, k)] + [c for part, figures in parts
                                        for c in (_fmt(figures.get(k)), _ci(intervals[part].get(k)))]
            for k in m["task_metrics"] if k not in per_type]
    note = "\n\nExact match: on the generation prompts." if "before" in m else ""
    text = "## Result\n\n" + table(header, rows) + note
    if per_type:
        reported = intervals["reported"]
        text += ("\n\nPer entity type (reported split; support: its gold entities):\n\n"
                 + table(["entity type"] + list(PER_TYPE) + ["F1 95 % CI"],
                         [[t] + [_fmt(m["task_metrics"].get(f"{k}_{t}")) for k in PER_TYPE]
                          + [_ci(reported.get(f"f1_{t}"))] for t in _entity_types(m["task_metrics"])]))
    return text


def render(record: dict, curve: str | None = None) -> str:
    """The report; `curve`: the training-curve PNG's path relative to where the report is written."""
    recipe, m, env = record["recipe"], record["metrics"], record["environment"]
    method = recipe["method"]
    quant = recipe.get("quant")
    task = get_task(recipe["model"]["task"])
    predictions, protocol = record["predictions"], m.get("protocol")
    method_args = ", ".join(f"{k}={v!r}" for k, v in method.items() if k != "kind")
    quant_text = "none (full precision)" if not quant else ", ".join(f"{k}={v!r}" for k, v in quant.items())
    data = env["data"]
    files = data.get("files", {})
    data_title = title(recipe["data"]["name"], recipe["data"].get("files"))
    sections = [
        f"# {recipe['name']}: {method['kind']} on {data_title} with {recipe['model']['name']}",
        f"Generated by peftlab from run `{Path(record['dir']).name}`. Command:\n\n```\n{env['command']}\n```"
        + "".join(f"\n\nResumed from step {r['from_step']} ({r['time']}, {r['host']}):\n\n```\n{r['command']}\n```"
                  for r in env.get("resumed", [])),
        _result(m, predictions, task, protocol),
    ] + ([_protocol(protocol)] if protocol else []) + ([_before_after(m)] if "before" in m else []) + [
        _error_analysis(recipe["model"]["task"], predictions.get("reported", []), m.get("labels") or []),
        f"## Training curve\n\n![training curve]({curve})" if curve else None,
        _tracking(record["dir"], env),
        "## Cost\n\n" + table(["measure", "value"], [
            ["trainable parameters", f"{m['trainable_params']:,} ({m['trainable_percent']:.3f} % of {m['total_params']:,})"],
            ["train time (steps only, no evaluation)", f"{m['train_seconds']:.1f} s"],
            ["wall time of the whole run" if not env.get("resumed") else "wall time of the last (resumed) process",
             f"{m['wall_seconds']:.1f} s"],
            ["throughput", f"{m['train_samples_per_second']:.1f} samples/s, {m['train_tokens_per_second']:.0f} tokens/s"],
            ["optimizer steps", f"{m['steps']} (batch {recipe['train']['batch_size']}, {m['epochs']:.2f} epochs)"],
            ["peak memory (process RSS, whole run)", human_bytes(m["peak_rss_bytes"]) + (
                " (main); per process: " + ", ".join(map(human_bytes, m["peak_rss_bytes_per_process"]))
                if "peak_rss_bytes_per_process" in m else "")],
            *_memory_rows(m.get("memory")),
            ["peak GPU memory allocated", human_bytes(m.get("cuda_peak_allocated_bytes"))],
            ["saved weights on disk", human_bytes(m["saved_bytes"])],
        ] + _quant_rows(m.get("quantized_storage"))),
        "## Setup\n\n" + table(["part", "value"], [
            ["model", f"{recipe['model']['name']} (loaded from {env['model']['source']}: `{env['model']['path']}`)"],
            ["task", recipe["model"]["task"] + (f", labels {m['labels']}" if m.get("labels") else "")],
            ["task head", _head_text(recipe["model"].get("head"))],
            ["method", f"{method['kind']}({method_args})"],
            ["quantization", quant_text],
            ["data", f"{data_title} from {data['source']}: train {data['train_examples']:,} examples, "
                     f"validation {data['eval_examples']:,}"],
            ["training", ", ".join(f"{k}={v}" for k, v in recipe["train"].items())],
            *([["memory levers", levers.describe(env["levers"])]] if "levers" in env else []),
            ["processes; speed settings", f"{env.get('processes', 1)}; " + ", ".join(
                f"{k} {v}" for k, v in env.get("speed", {}).items())],
            ["seed", recipe["train"]["seed"]],
        ]),
        "## Evaluations during training (selection split)\n\n" + _evaluations(record["log_history"]),
        "## Training loss\n\n" + _loss_curve(record["log_history"]),
        "## Environment\n\n" + table(["item", "value"], [
            ["hardware", f"{env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} torch threads), "
                         f"GPU: {env['gpu'] or 'none'}, RAM {human_bytes(env['memory_total_bytes'])}"],
            ["python / platform", f"{env['python']} / {env['platform']}"],
            ["machine load (1-min average, start / end)",
             f"{env.get('load_average_at_start', float('nan')):.1f} / "
             f"{record['metrics'].get('load_average_at_end', float('nan')):.1f}"],
            ["versions", ", ".join(f"{k} {v}" for k, v in env["versions"].items())],
            ["peftlab commit", env.get("peftlab_commit")],
            ["base weights sha256", env["model"].get("fingerprint")],
        ] + ([["base weights converted from", env["model"]["origin"]]] if env["model"].get("origin") else []) + [[f"data md5 `{name}`", digest] for name, digest in files.items()]),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def write(run: Path, reports_dir: Path | None, finished: bool = True) -> Path:
    """Render the run's report and training curve into the run directory and copy them (+ metrics.json) to
    reports_dir."""
    record = load_record(run, finished)
    m = record["metrics"]
    drawn = plot_training_curve(record["log_history"], get_task(record["recipe"]["model"]["task"]).BEST_METRIC,
                                m.get("best_step"), Path(run) / CURVE)
    text = render(record, CURVE if drawn else None)
    rundir.write_atomic(Path(run) / "report.md", text)
    if reports_dir is not None:
        name = record["recipe"]["name"]
        if drawn:  # beside the report copy, in a folder of its own as comparisons keep their plots
            (reports_dir / name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(run) / CURVE, reports_dir / name / CURVE)
        events = os.path.relpath(Path(run) / rundir.TENSORBOARD, reports_dir)  # the copy links the run's folder
        rundir.write_atomic(reports_dir / f"{name}.md", text.replace(f"]({CURVE})", f"]({name}/{CURVE})")
                            .replace(f"]({rundir.TENSORBOARD})", f"]({events})"))
        shutil.copyfile(Path(run) / "metrics.json", reports_dir / f".{name}.json.tmp")
        (reports_dir / f".{name}.json.tmp").replace(reports_dir / f"{name}.json")
    return Path(run) / "report.md"

"""The comparison report: one table (+ two plots) built only from the variants' run records."""

from __future__ import annotations

import statistics
from pathlib import Path

from . import rundir
from .measure import human_bytes
from .run_report import _per_type_keys, load_record, table

PLOT_MEMORY, PLOT_PARAMS = "memory_vs_score.png", "params_vs_score.png"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt_score(values: list[float], scale: float = 100) -> str:
    mean, std = _mean_std(values)
    return f"{scale * mean:.2f}" + (f" ± {scale * std:.2f}" if len(values) > 1 else "")


def _raw_metrics(first: dict) -> tuple[str, ...]:
    """Metrics that are not fractions (e.g. perplexity): shown as they are, not as percentages."""
    from .tasks import get_task

    return getattr(get_task(first["recipe"]["model"]["task"]), "RAW_METRICS", ())


def _header(name: str, raw: tuple[str, ...]) -> str:
    return name if name in raw else f"{name} (%)"


def summarise(record: dict) -> tuple[list[dict], dict]:
    """One row per variant name: its finished runs' records, or the failure reasons."""
    rows: dict[str, dict] = {}
    for v in record["variants"]:
        row = rows.setdefault(v["name"], {"name": v["name"], "runs": [], "errors": []})
        if v["state"] == "finished":
            row["runs"].append(load_record(Path(v["run"])))
        elif v["error"] not in row["errors"]:  # the same reason for several seeds is shown once
            row["errors"].append(v["error"])
    first = next((r["runs"][0] for r in rows.values() if r["runs"]), None)
    return list(rows.values()), first


def _metric_names(first: dict) -> tuple[str, list[str]]:
    from .tasks import get_task

    task = get_task(first["recipe"]["model"]["task"])
    main = getattr(task, "COMPARE_METRIC", task.BEST_METRIC)  # a fraction, higher is better
    metrics = first["metrics"]["task_metrics"]
    per_type = _per_type_keys(metrics)  # entity recognition's per-type scores stay in each run's report
    others = [k for k in metrics if k not in (main, "loss") and k not in per_type]
    return main, others


def _values(row: dict, key: str) -> list[float]:
    return [r["metrics"][key] for r in row["runs"]]


def _scores(row: dict, metric: str) -> list[float]:
    return [r["metrics"]["task_metrics"][metric] for r in row["runs"]]


def _method(run: dict) -> str:
    quant = run["recipe"].get("quant")
    return run["recipe"]["method"]["kind"] + (f" + {quant['kind']} base" if quant else "")


def _row_cells(row: dict, main: str, others: list[str], baseline: float | None, raw: tuple[str, ...] = ()) -> list[str]:
    if not row["runs"]:  # a variant over --budget stopped before training: "does not fit (plan: X)"
        unfit = all(e and e.startswith("does not fit") for e in row["errors"])
        cells = row["errors"][:1] + [""] if unfit else ["**failed**", "; ".join(row["errors"])]
        return [row["name"], *cells] + [""] * (5 + len(MEMORY_HEADER) + len(others))
    m0 = row["runs"][0]["metrics"]
    delta = "" if baseline is None else f"{100 * (statistics.fmean(_scores(row, main)) - baseline):+.2f}"
    failed = f" (some seeds failed: {'; '.join(row['errors'])})" if row["errors"] else ""
    return [row["name"] + failed, _method(row["runs"][0]),
            f"{m0['trainable_params']:,} ({m0['trainable_percent']:.2f} %)",
            human_bytes(m0["saved_bytes"]), *memory_cells(row),
            f"{statistics.fmean(_values(row, 'train_seconds')):.1f} s",
            f"{statistics.fmean(_values(row, 'train_samples_per_second')):.1f}",
            _fmt_score(_scores(row, main))] + [_fmt_score(_scores(row, k), 1 if k in raw else 100) for k in others] \
        + [delta]


MEMORY_HEADER = ["model state", "training peak (live tensors)", "plan (error)", "training RSS", "evaluation RSS"]


def _memory(row: dict, key: str) -> float | None:
    values = [r["metrics"].get("memory", {}).get(key) for r in row["runs"]]
    return statistics.fmean(values) if values and None not in values else None


def training_peak(row: dict) -> float:
    """What the memory plot ranks by: the live-tensor training peak (process peak RSS in records before it)."""
    return _memory(row, "train_peak_bytes") or statistics.fmean(_values(row, "peak_rss_bytes"))


def memory_cells(row: dict) -> list[str]:
    """Model state, training peak of live tensors, the plan with its error, training and evaluation RSS (means over
    seeds; see peftlab/memory.py for how each is measured)."""
    state = [r["metrics"].get("memory", {}).get("model_state_bytes") for r in row["runs"]]
    live, planned = _memory(row, "train_peak_bytes"), _memory(row, "predicted_train_peak_bytes")
    error = f" ({100 * (planned - live) / live:+.1f} %)" if live and planned else ""
    return [human_bytes(statistics.fmean(s["total"] for s in state) if None not in state else None),
            human_bytes(live), human_bytes(planned) + error,
            human_bytes(_memory(row, "train_peak_rss_bytes")), human_bytes(_memory(row, "eval_peak_rss_bytes"))]


def pareto(points: list[tuple[float, float, str]]) -> list[str]:
    """Names on the front of (lower cost, higher score): no other point is at least as good on both."""
    return [name for cost, score, name in points
            if not any(c <= cost and s >= score and (c, s) != (cost, score) for c, s, _ in points)]


def _plot(rows: list[dict], main: str, key, xlabel: str, path: Path, log_x: bool, front: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(key(r), 100 * statistics.fmean(_scores(r, main)), r["name"]) for r in rows if r["runs"]]
    on_front = set(pareto(points)) if front else set()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for x, y, name in points:
        ax.scatter(x, y, color="tab:red" if name in on_front else "tab:blue", zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if on_front:
        xs, ys = zip(*sorted((x, y) for x, y, n in points if n in on_front))
        ax.step(xs, ys, where="post", color="tab:red", alpha=0.6, label="Pareto front")
        ax.legend(loc="lower right")
    ax.set_xscale("log" if log_x else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{main} (%)")  # validation, or generation prompts for causal_lm
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(record: dict, rows: list[dict], first: dict, plot_dir: str) -> str:
    main, others = _metric_names(first)
    raw = _raw_metrics(first)
    base_row = next((r for r in rows if r["name"] == record["baseline"] and r["runs"]), None)
    baseline = statistics.fmean(_scores(base_row, main)) if base_row else None
    header = (["variant", "method", "trainable params", "adapter on disk", *MEMORY_HEADER, "train time", "samples/s", f"{main} (%)"] + [_header(k, raw) for k in others]
              + [f"Δ {main} vs {record['baseline']} (pt)"])
    env, data = first["environment"], first["environment"]["data"]
    seeds = ", ".join(map(str, record["seeds"]))
    front = pareto([(training_peak(r), statistics.fmean(_scores(r, main)), r["name"])
                    for r in rows if r["runs"]])
    return "\n\n".join([
        f"# {record['name']}: methods compared on {first['recipe']['data']['name']} "
        f"with {first['recipe']['model']['name']}",
        f"Generated by peftlab from the run records in `{record['dir']}`. Command:\n\n```\n{record['command']}\n```",
        f"Every variant: same model, same data ({data['train_examples']:,} training examples, "
        f"{data['eval_examples']:,} validation), seeds {seeds}, overrides {record['overrides'] or 'none'}, "
        f"each in its own process. Scores are mean ± std over seeds. Memory: model state = weights as stored + "
        f"gradients + optimizer state; training peak = peak of live tensors during training steps; plan = its "
        f"prediction before the run; training / evaluation RSS = the process's peak resident memory in each phase "
        f"(README, section Memory). Wall time of the whole comparison: {record['wall_seconds'] / 60:.1f} min.",
        "## Results\n\n" + table(header, [_row_cells(r, main, others, baseline, raw) for r in rows]),
        f"Pareto front (lowest training peak for its {main}): {', '.join(front)}.",
        f"![peak memory vs {main}]({plot_dir}/{PLOT_MEMORY})\n\n![trainable parameters vs {main}]({plot_dir}/{PLOT_PARAMS})",
        "## Environment\n\n" + table(["item", "value"], [
            ["hardware", f"{env['cpu']} ({env['cpu_count']} cores), GPU: {env['gpu'] or 'none'}"],
            ["versions", ", ".join(f"{k} {v}" for k, v in env["versions"].items())],
            ["peftlab commit", env.get("peftlab_commit")],
            ["seeds", seeds],
        ] + [[f"data md5 `{name}`", digest] for name, digest in data.get("files", {}).items()]),
        "## Runs\n\n" + table(["variant", "seed", "state", "run directory"],
                              [[v["name"], v["seed"], v["state"] + (f": {v['error']}" if v["error"] else ""),
                                f"`{v['run']}`"] for v in record["variants"]]),
    ]) + "\n"


def write(record: dict, reports_dir: Path) -> Path:
    rows, first = summarise(record)
    if first is None:
        from .errors import PeftlabError

        raise PeftlabError(f"comparison {record['name']}: no variant finished; see the logs in {record['dir']}")
    main, _ = _metric_names(first)
    plot_dir = reports_dir / record["name"]
    plot_dir.mkdir(parents=True, exist_ok=True)
    _plot(rows, main, lambda r: training_peak(r) / 2**20, "training peak, live tensors (MiB)",
          plot_dir / PLOT_MEMORY, log_x=False, front=True)
    _plot(rows, main, lambda r: r["runs"][0]["metrics"]["trainable_params"], "trainable parameters",
          plot_dir / PLOT_PARAMS, log_x=True, front=False)
    path = reports_dir / f"{record['name']}.md"
    rundir.write_atomic(path, render(record, rows, first, record["name"]))
    rundir.write_json(reports_dir / f"{record['name']}.json", record)
    return path

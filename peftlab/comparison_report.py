"""The comparison report: tables (+ two plots) built only from the variants' run records.

Scores are recomputed from every run's predictions.jsonl (comparison_stats): per variant the mean over seeds with
a 95 % interval that resamples examples and seeds, the paired test against the baseline on the same examples,
and a Pareto front drawn from significant differences only.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from . import comparison_stats, lr_search, rundir, stats
from .data import title
from .levers import trimming_words
from .measure import human_bytes
from .memory import compared_plan
from .run_report import _per_type_keys, load_record, table

PLOT_MEMORY, PLOT_PARAMS = "memory_vs_score.png", "params_vs_score.png"


def _task(first: dict):
    from .tasks import get_task

    return get_task(first["recipe"]["model"]["task"])


def _raw_metrics(first: dict) -> tuple[str, ...]:
    """Metrics that are not fractions (e.g. perplexity): shown as they are, not as percentages."""
    return getattr(_task(first), "RAW_METRICS", ())


def _header(name: str, raw: tuple[str, ...]) -> str:
    return name if name in raw else f"{name} (%)"


def _reported_runs(record: dict) -> list[dict]:
    """The runs the tables report: for a variant with a learning-rate search, those at its chosen rate (the other
    grid points are shown in the learning-rate table only; grid runs that left generation out, in that table only).
    A variant whose search has not finished (a comparison stopped during its grid) has none yet."""
    search = record.get("lr_search", {})
    return [v for v in record["variants"] if not v.get("search")
            and (search[v["name"]]["chosen"] in (None, v.get("lr")) if v["name"] in search else v.get("lr") is None)]


def _part_way_line(record: dict) -> str:
    """A comparison stopped part-way (its file's seeds not all run yet) says what each variant has so far, since
    the header names the file's seeds: resuming it runs the rest."""
    reported = _reported_runs(record)
    names = list(dict.fromkeys(v["name"] for v in record["variants"]))
    ran = {name: sorted({v["seed"] for v in reported if v["name"] == name}) for name in names}
    short = {name: seeds for name, seeds in ran.items() if seeds != sorted(record["seeds"])}
    if not short:
        return ""
    so_far = [f"{name} seeds {', '.join(map(str, seeds))}" if seeds else f"{name} none (its rate search has not finished)"
              for name, seeds in short.items()]
    return (f"**Part-way:** the comparison asks for seeds {', '.join(map(str, record['seeds']))}; reported so far: "
            f"{'; '.join(so_far)}. Every figure below is on those runs; `--resume` on the records runs the rest.")


def summarise(record: dict) -> tuple[list[dict], dict]:
    """One row per variant name: its finished runs' records, or the failure reasons."""
    rows: dict[str, dict] = {}
    for v in _reported_runs(record):
        row = rows.setdefault(v["name"], {"name": v["name"], "runs": [], "errors": []})
        if v["state"] == "finished":
            row["runs"].append(load_record(Path(v["run"])))
        elif v["error"] not in row["errors"]:  # the same reason for several seeds is shown once
            row["errors"].append(v["error"])
    first = next((r["runs"][0] for r in rows.values() if r["runs"]), None)
    return list(rows.values()), first


def _metric_names(first: dict, figs: dict) -> tuple[str, list[str]]:
    """The ranking metric (comparison_stats.ranking_metric) and the other task metrics, as the runs recorded them."""
    main, _ = comparison_stats.ranking_metric(_task(first))
    metrics = first["metrics"]["task_metrics"]
    scored = dict.fromkeys(k for fig in figs.values() for k in fig.intervals)  # a variant may score fewer
    # entity recognition's per-type scores stay in each run's report
    per_type = _per_type_keys(metrics) | _per_type_keys(scored)
    return main, [k for k in dict.fromkeys([*metrics, *scored])
                  if k not in (main, "loss") and k not in per_type and k in scored]


def _partial_metrics_note(figs: dict, metrics: list[str], record: dict) -> str:
    """A metric only some variants or seeds scored (a causal LM's exact match, where the comparison generates for a
    few variants, or on its first seed only: Comparison.generate, generate_seeds)."""
    notes = []
    for k in metrics:
        seeds = {name: sorted(s for s, r in fig.replicates.items() if k in r.point) for name, fig in figs.items()}
        having = [name for name in figs if seeds[name]]
        fewer = sorted({tuple(seeds[name]) for name in having if len(seeds[name]) < len(figs[name].replicates)})
        if len(having) == len(figs) and not fewer:
            continue
        on = f" on seed {', '.join(map(str, fewer[0]))} only (its interval covers the examples, not the seeds)" \
            if len(fewer) == 1 else ""
        others = "" if len(having) == len(figs) else "; the other variants ran without it"
        notes.append(f"{k}: scored for {', '.join(having)}{on}{others}.")
    return "\n".join(f"- {n}" for n in notes)


def _values(row: dict, key: str) -> list[float]:
    return [r["metrics"][key] for r in row["runs"]]


def _method(run: dict) -> str:
    quant = run["recipe"].get("quant")
    return run["recipe"]["method"]["kind"] + (f" + {quant['kind']} base" if quant else "")


def _scale(metric: str, raw: tuple[str, ...]) -> float:
    return 1.0 if metric in raw else 100.0


def _interval_cell(interval, scale: float) -> str:
    return f"{scale * interval.point:.2f} [{scale * interval.low:.2f}, {scale * interval.high:.2f}]"


def _difference_cell(difference, scale: float) -> str:
    """Δ [95 % interval] and the paired p-value; bold with * when p < ALPHA."""
    cell = (f"{scale * difference.difference:+.2f} [{scale * difference.low:+.2f}, {scale * difference.high:+.2f}] "
            f"p={difference.p_value:.3f}")
    return f"**{cell} \\***" if difference.p_value < comparison_stats.ALPHA else cell


def _row_cells(row: dict, main: str, others: list[str], fig, raw: tuple[str, ...]) -> list[str]:
    if not row["runs"]:  # a variant over --budget stopped before training: "does not fit (plan: X)"
        unfit = all(e and e.startswith("does not fit") for e in row["errors"])
        cells = row["errors"][:1] + [""] if unfit else ["**failed**", "; ".join(row["errors"])]
        return [row["name"], *cells] + [""] * (5 + len(MEMORY_HEADER) + len(others))
    m0 = row["runs"][0]["metrics"]
    delta = fig.vs_baseline.get(main)
    failed = f" (some seeds failed: {'; '.join(row['errors'])})" if row["errors"] else ""
    return [row["name"] + failed, _method(row["runs"][0]),
            f"{m0['trainable_params']:,} ({m0['trainable_percent']:.2f} %)",
            human_bytes(m0["saved_bytes"]), *memory_cells(row),
            f"{statistics.fmean(_values(row, 'train_seconds')):.1f} s",
            f"{statistics.fmean(_values(row, 'train_samples_per_second')):.1f}"] \
        + [_interval_cell(fig.intervals[k], _scale(k, raw)) if k in fig.intervals else "—"
           for k in [main, *others]] \
        + [_difference_cell(delta, _scale(main, raw)) if delta else "no shared seed"]


MEMORY_HEADER = ["model state", "training peak (live tensors)", "plan at that batch (error)", "training RSS",
                 "evaluation RSS"]


def _mean(values: list) -> float | None:
    return statistics.fmean(values) if values and None not in values else None


def _memory(row: dict, key: str) -> float | None:
    return _mean([r["metrics"].get("memory", {}).get(key) for r in row["runs"]])


def training_peak(row: dict) -> float:
    """What the memory plot ranks by: the live-tensor training peak (process peak RSS in records before it)."""
    return _memory(row, "train_peak_bytes") or statistics.fmean(_values(row, "peak_rss_bytes"))


def memory_cells(row: dict) -> list[str]:
    """Model state, training peak of live tensors, the plan with its error, training and evaluation RSS (means over
    seeds; see peftlab/memory.py for how each is measured)."""
    state = [r["metrics"].get("memory", {}).get("model_state_bytes") for r in row["runs"]]
    live = _memory(row, "train_peak_bytes")
    planned = _mean([compared_plan(r["metrics"].get("memory", {}))["train_peak_bytes"] for r in row["runs"]])
    error = f" ({100 * (planned - live) / live:+.1f} %)" if live and planned else ""
    rss = [human_bytes(_memory(row, "train_peak_rss_bytes")), human_bytes(_memory(row, "eval_peak_rss_bytes"))] \
        if rss_without_profiler(row) else [OLD_RSS, OLD_RSS]
    return [human_bytes(statistics.fmean(s["total"] for s in state) if None not in state else None),
            human_bytes(live), human_bytes(planned) + error, *rss]


OLD_RSS = "n/a †"


def rss_without_profiler(row: dict) -> bool:
    """Whether every run of the variant measured its RSS as peftlab/memory.py does now. Records made before
    (no train_rss_largest_batch) counted the profiler's event buffers as training memory, GBs that grow with a
    method's operation count (a LoRA step's RSS then exceeded full fine-tuning's), and let the evaluation phase
    start from the training step's freed blocks: their RSS columns are left out, not shown wrong."""
    memories = [r["metrics"].get("memory") for r in row["runs"]]
    return all(m is None or "train_rss_largest_batch" in m for m in memories)  # None: no memory record at all


def old_rss_note(rows: list[dict]) -> str:
    old = [row["name"] for row in rows if not rss_without_profiler(row)]
    return (f"- {OLD_RSS}: the RSS of {', '.join(old)} was recorded before peftlab left the live-tensor profiler's "
            "steps out of it (their event buffers, GBs that grow with a method's operation count, counted as "
            "training memory) and before each phase began after the allocator's release; not comparable across "
            "methods, so not shown. The live-tensor training peak is unaffected. A re-run measures them.") if old else ""


def pareto(points: list[tuple[float, float, str]]) -> list[str]:
    """Names on the front of (lower cost, higher score): no other point is at least as good on both."""
    return [name for cost, score, name in points
            if not any(c <= cost and s >= score and (c, s) != (cost, score) for c, s, _ in points)]


def _plot(rows: list[dict], figs: dict, main: str, key, xlabel: str, path: Path, log_x: bool,
          on_front: set[str], raw: tuple[str, ...]) -> None:
    """Each variant's mean with its 95 % interval as an error bar; the front in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = _scale(main, raw)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in (r for r in rows if r["name"] in figs):
        x, ci = key(row), figs[row["name"]].intervals[main]
        ax.errorbar(x, scale * ci.point, yerr=[[scale * (ci.point - ci.low)], [scale * (ci.high - ci.point)]],
                    fmt="o", capsize=3, color="tab:red" if row["name"] in on_front else "tab:blue", zorder=3)
        ax.annotate(row["name"], (x, scale * ci.point), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log" if log_x else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{_header(main, raw)}, mean and 95 % interval")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _front(rows: list[dict], figs: dict, main: str, greater: bool) -> list[str]:
    costs = {r["name"]: training_peak(r) for r in rows if r["runs"]}
    return comparison_stats.significant_front(costs, figs, main, greater)


def _ratio_cell(difference) -> str:
    ratio = difference.ratio if difference else None
    return f"{100 * ratio.point:.1f} [{100 * ratio.low:.1f}, {100 * ratio.high:.1f}]" if ratio else "—"


def _paired_section(record: dict, rows: list[dict], figs: dict, metrics: list[str], raw: tuple[str, ...]) -> str:
    main, baseline = metrics[0], record["baseline"]
    header = ["variant"] + [f"Δ {_header(k, raw)}" for k in metrics] + [f"{main} as % of {baseline}"]
    body = [[r["name"]] + [_difference_cell(figs[r["name"]].vs_baseline[k], _scale(k, raw))
                           if k in figs[r["name"]].vs_baseline
                           else "—" if figs[r["name"]].vs_baseline else "no shared seed" for k in metrics]
            + [_ratio_cell(figs[r["name"]].vs_baseline.get(main))]
            for r in rows if r["name"] in figs and r["name"] != baseline]
    return (f"## Paired tests against {baseline}\n\nEach variant minus {baseline} on the same "
            f"examples, pooled over the seeds both ran: Δ [95 % interval] and the two-sided p-value of a paired "
            f"bootstrap; **bold \\*** marks p < {comparison_stats.ALPHA}. The last column is the variant's {main} "
            f"divided by {baseline}'s, with its 95 % interval from the same draws.\n\n" + table(header, body))


def pair_differences(record: dict, figs: dict) -> dict[str, tuple[str, dict]]:
    """The comparison's own pairs (Comparison.pairs) that both ran: variant -> (the variant it is tested against,
    the paired differences per metric, as against the baseline)."""
    return {a: (b, comparison_stats.paired(figs[a].replicates, figs[b].replicates) or {})
            for a, b in record.get("pairs", {}).items() if a in figs and b in figs}


def _pairs_section(pairs: dict[str, tuple[str, dict]], metrics: list[str], raw: tuple[str, ...]) -> str:
    if not pairs:
        return ""
    header = ["variant", "against"] + [f"Δ {_header(k, raw)}" for k in metrics] + [f"{metrics[0]} as % of it"]
    body = [[a, b] + [_difference_cell(differences[k], _scale(k, raw)) if k in differences else "no shared seed"
                      for k in metrics] + [_ratio_cell(differences.get(metrics[0]))]
            for a, (b, differences) in pairs.items()]
    return ("## Other paired tests\n\nThe pairs the comparison file names: the first variant minus the second, "
            "tested as above, and the first's score as a percentage of the second's.\n\n" + table(header, body))


def _separation_notes(figs: dict, metrics: list[str], raw: tuple[str, ...]) -> str:
    notes = []
    for k in metrics:
        separated, width, spread = comparison_stats.separates(figs, k)
        if not separated:
            notes.append(f"{k}: its 95 % intervals (median width {_scale(k, raw) * width:.2f}) are wider than the "
                         f"spread of the variants' means ({_scale(k, raw) * spread:.2f}): it does not rank them.")
    return "\n".join(f"- {n}" for n in notes)


def lr_grid_scores(record: dict) -> dict[str, dict[float, float]]:
    """Per searched variant, each grid point's selection-split score, read again from the grid runs' records."""
    scores: dict[str, dict[float, float]] = {}
    searched = {v["name"] for v in record["variants"] if v.get("search")}  # its grid runs, not the re-run after
    for v in record["variants"]:
        if (v["name"] in record.get("lr_search", {}) and v["seed"] == record["seeds"][0]
                and (v.get("search") or v["name"] not in searched)):
            run = load_record(Path(v["run"])) if v["state"] == "finished" else None
            value = lr_search.selection_score(run, _task(run))[1] if run else math.nan
            scores.setdefault(v["name"], {})[v["lr"]] = value
    return scores


def _lr_section(record: dict, raw: tuple[str, ...]) -> str:
    search = record.get("lr_search", {})
    if not search:
        return ""
    rows, edges = [], False
    for name, scores in lr_grid_scores(record).items():
        s = search[name]
        scale = _scale(s["metric"], raw) if s["metric"] else 100
        cells = [("**" if lr == s["chosen"] else "") + f"{lr:g}: " + ("failed" if math.isnan(v) else f"{scale * v:.2f}")
                 + ("**" if lr == s["chosen"] else "") for lr, v in scores.items()]
        at_edge = lr_search.beyond_edge(list(scores), s["chosen"]) is not None
        edges = edges or at_edge
        rows.append([name, s["metric"] or "", ", ".join(cells), "none (every grid point failed)"
                     if s["chosen"] is None else f"{s['chosen']:g}" + (" (grid edge)" if at_edge else "")])
    return (f"## Learning rates\n\nEach variant's grid ran on seed {record['seeds'][0]}; the rate with the best "
            "selection-split score (its best checkpoint's, on examples held out of train) was kept and the other "
            "seeds ran at it." + _rerun_note(record)
            + (" A rate chosen at its grid's edge may be beaten by one beyond it: with `lrs=\"auto\"` the search goes "
               "on past the edge, a grid given as a list is searched as given, so that variant's row may understate "
               "it." if edges else "") + "\n\n"
            + table(["variant", "selection metric", "grid: score", "chosen"], rows))


def _rerun_note(record: dict) -> str:
    rerun = list(dict.fromkeys(v["name"] for v in record["variants"] if v.get("search")))
    return (f" {', '.join(rerun)} ran the grid without generating (generation scores the reported split only) and "
            f"the chosen rate again on seed {record['seeds'][0]}, with generation." if rerun else "")


def _protocol_line(first: dict) -> str:
    protocol = first["metrics"].get("protocol")
    if not protocol:
        return ""
    parts = protocol.get("parts", {})
    return "Protocol: " + "; ".join(f"{part} {p['split']} ({p['examples']:,} of {p['of']:,})"
                                    for part, p in parts.items()) + \
        f". Checkpoints and learning rates are chosen on the selection part by {protocol.get('selection_metric')}."


def _resumed_line(record: dict) -> str:
    """A comparison continued with --resume (after a stop, or to add recipes or seeds) says so: its runs span
    sittings."""
    commands = record.get("resumed", [])
    return "Continued (after a stop, or to add recipes or seeds) with:\n\n```\n" + "\n".join(commands) + "\n```" if commands else ""


def _commits(rows: list[dict]) -> str:
    """Every peftlab commit the reported runs were made at (a resumed comparison may have more than one)."""
    commits = dict.fromkeys(str(r["environment"].get("peftlab_commit")) for row in rows for r in row["runs"])
    return ", ".join(commits)


def levers_note(rows: list[dict]) -> str:
    """The memory levers the runs trained with (gradient checkpointing, micro-batch): "auto" and --budget choose
    them per run, so variants may differ, and then their memory and time columns compare the settings too."""
    def words(levers: dict) -> str:
        return (f"gradient checkpointing {'on' if levers['gradient_checkpointing'] else 'off'}, micro-batch "
                f"{levers['micro_batch_size']}, {trimming_words(levers)}")

    used = {row["name"]: sorted({words(r["environment"]["levers"]) for r in row["runs"]
                                 if "levers" in r["environment"]}) for row in rows}
    settings = {s for found in used.values() for s in found}
    if len(settings) == 1:
        return f"Memory levers, every run: {settings.pop()}."
    if not settings:
        return ""
    return ("Memory levers differ between runs (their memory and time columns compare these settings as well as the "
            "methods): " + "; ".join(f"{name}: {' / '.join(found)}" for name, found in used.items() if found) + ".")


def _load_row(rows: list[dict], cores: int) -> list[list[str]]:
    """The machine's 1-minute load average at the runs' starts and ends: above the core count, other work shared
    the CPU and the time columns are slower than an idle machine's (memory and scores are unaffected)."""
    loads = [x for row in rows for r in row["runs"]
             for x in (r["environment"].get("load_average_at_start"), r["metrics"].get("load_average_at_end"))
             if x is not None]
    if not loads:
        return []
    busy = " (above the core count: other work shared the CPU, times are slower than on an idle machine)"
    return [["machine load (1-min average, runs' start and end)",
             f"{min(loads):.1f}-{max(loads):.1f}" + (busy if max(loads) > cores + 0.5 else "")]]


def render(record: dict, rows: list[dict], first: dict, figs: dict, pairs: dict, plot_dir: str) -> str:
    main, others = _metric_names(first, figs)
    raw = _raw_metrics(first)
    greater = comparison_stats.ranking_metric(_task(first))[1]
    header = (["variant", "method", "trainable params", "adapter on disk", *MEMORY_HEADER, "train time", "samples/s"]
              + [_header(k, raw) for k in [main, *others]] + [f"Δ {main} vs {record['baseline']}"])
    env, data, recipe_data = first["environment"], first["environment"]["data"], first["recipe"]["data"]
    seeds = ", ".join(map(str, record["seeds"]))
    reported_seeds = {run["recipe"]["train"]["seed"] for row in rows for run in row["runs"]}  # part-way: fewer
    n_boot = record.get("bootstrap", 1000)
    return "\n\n".join(part for part in [
        f"# {record['name']}: methods compared on {title(recipe_data['name'], recipe_data.get('files'))} "
        f"with {first['recipe']['model']['name']}",
        f"Generated by peftlab from the run records in `{record['dir']}`, kept without weights in "
        f"`{record['name']}/records/` beside this report (`python -m peftlab.compare --report-only "
        f"reports/{record['name']}/records` rebuilds it). Command:\n\n```\n{record['command']}\n```",
        _resumed_line(record),
        _part_way_line(record),
        f"Every variant: same model, same data ({data['train_examples']:,} training examples, "
        f"{data['eval_examples']:,} evaluated), seeds {seeds}, overrides {record['overrides'] or 'none'}, "
        f"each in its own process. Scores are recomputed from each run's per-example predictions: mean over seeds "
        f"[95 % interval] from a {n_boot}-resample bootstrap that draws examples (the same for every seed and "
        f"variant) and seeds ({'higher' if greater else 'lower'} {main} is better; variants are ranked by it). "
        f"With {len(reported_seeds)} seed(s) reported the seed part of the interval is coarse. Memory: model state = weights "
        f"as stored + gradients + optimizer state; training peak = peak of live tensors during training steps; plan "
        f"= the plan's figure for the largest batch the run trained (rows x tokens; the plan a budget is checked "
        f"against is for the worst batch, micro-batch x the longest example, and is in each run's report); training "
        f"/ evaluation RSS = the process's peak resident memory in each phase, training's over the steps the "
        f"live-tensor profiler did not watch (README, section Memory): what the process held, with its libraries "
        f"(bitsandbytes' for a quantized base) and the freed blocks the allocator kept for reuse (the levers below "
        f"say how often it returned them), so methods are ranked by the training peak, not by it. Wall time "
        f"of the whole comparison: {record['wall_seconds'] / 60:.1f} min.",
        _protocol_line(first),
        "## Results\n\n" + table(header, [_row_cells(r, main, others, figs.get(r["name"]), raw) for r in rows]),
        "\n".join(filter(None, [_separation_notes(figs, others, raw), _partial_metrics_note(figs, others, record),
                                 old_rss_note(rows), levers_note(rows)])),
        f"Pareto front (lowest training peak for its {main}; a variant leaves it only for one significantly "
        f"better, p < {comparison_stats.ALPHA}, or clearly cheaper, under {comparison_stats.CLEARLY_CHEAPER:.0%} "
        f"of its memory): {', '.join(_front(rows, figs, main, greater))}.",
        f"![peak memory vs {main}]({plot_dir}/{PLOT_MEMORY})\n\n![trainable parameters vs {main}]({plot_dir}/{PLOT_PARAMS})",
        _base_section(rows),
        _paired_section(record, rows, figs, [main, *others], raw),
        _pairs_section(pairs, [main, *others], raw),
        _lr_section(record, raw),
        "## Environment\n\n" + table(["item", "value"], [
            ["hardware", f"{env['cpu']} ({env['cpu_count']} cores), GPU: {env['gpu'] or 'none'}"],
            *_load_row(rows, env["cpu_count"]),
            ["versions", ", ".join(f"{k} {v}" for k, v in env["versions"].items())],
            ["peftlab commit", _commits(rows)],
            ["seeds", seeds],
        ] + [[f"data md5 `{name}`", digest] for name, digest in data.get("files", {}).items()]),
        "## Runs\n\n" + table(["variant", "seed", "learning rate", "state", "run directory"],
                              [[v["name"], v["seed"], "recipe's" if v.get("lr") is None else f"{v['lr']:g}",
                                v["state"] + (f": {v['error']}" if v["error"] else ""), f"`{v['run']}`"]
                               for v in record["variants"]]),
    ] if part) + "\n"


def _base_section(rows: list[dict]) -> str:
    """A task that scores the base model before training (causal LM): its figures once per base (variants on the
    same weights and quantization share them; a comparison computes them once, --base-cache). Exact match carries
    its interval from the base's generations (generations.json)."""
    bases: dict[str, list] = {}
    for row in rows:
        for run in row["runs"]:  # the base's generations are in the runs that generated (generate_seeds)
            before = run["metrics"].get("before")
            if not before:
                continue
            quant = run["recipe"].get("quant")
            base = bases.setdefault("base model" + (f" ({quant['kind']})" if quant else ""), [before, None, []])
            base[2] += [] if row["name"] in base[2] else [row["name"]]
            generations = Path(run["dir"]) / "generations.json"
            if base[1] is None and generations.is_file():
                base[1] = [{"id": i, "kind": "generation", "exact": o["correct"]}
                           for i, o in enumerate(rundir.read_json(generations)["before"])]
    if not bases:
        return ""
    from .tasks import causal_lm

    body = []
    for name, (before, records, variants) in bases.items():
        exact = stats.bootstrap_ci(records, causal_lm.score_predictions)["exact_match"] if records else None
        body.append([name, ", ".join(variants)] + [f"{before[k]:.2f}" if k in before else "—"
                                                   for k in ("perplexity", "nll_per_token")]
                    + [f"{_interval_cell(exact, 100)} ({len(records)} prompts)" if exact else "—"])
    return ("## Before training\n\nThe base model as loaded, before any training, scored once per base on the same "
            "examples and prompts as the variants (exact match with its 95 % bootstrap interval over prompts).\n\n"
            + table(["base", "variants on it", "perplexity", "nll_per_token", "exact match (%)"], body))


def _difference_json(d) -> dict:
    ratio = {"ratio": d.ratio.point, "ratio_ci95": [d.ratio.low, d.ratio.high]} if d.ratio else {}
    return {"delta": d.difference, "delta_ci95": [d.low, d.high], "p_value": d.p_value} | ratio


def results_json(figs: dict, record: dict, pairs: dict[str, tuple[str, dict]]) -> dict:
    """Per variant and metric: mean, `ci95`, and the paired difference to the baseline with its `p_value`; a variant
    the comparison pairs with another (Comparison.pairs) also has `vs` {against, metrics: the same differences}."""
    search = record.get("lr_search", {})
    grids = lr_grid_scores(record)
    results = {name: {"lr": search.get(name, {}).get("chosen"), "lr_grid": {f"{lr:g}": s for lr, s in
                                                                         grids.get(name, {}).items()},
                      "seeds": sorted(fig.replicates),
                      "metrics": {k: {"mean": ci.point, "ci95": [ci.low, ci.high]}
                                  | (_difference_json(d) if (d := fig.vs_baseline.get(k)) else {})
                                  for k, ci in fig.intervals.items()}}
               for name, fig in figs.items()}
    for a, (b, differences) in pairs.items():
        results[a]["vs"] = {"against": b, "metrics": {k: _difference_json(d) for k, d in differences.items()}}
    return results


def write(record: dict, reports_dir: Path) -> Path:
    rows, first = summarise(record)
    if first is None:
        from .errors import PeftlabError

        raise PeftlabError(f"comparison {record['name']}: no variant finished; see the logs in {record['dir']}")
    figs = comparison_stats.figures({r["name"]: r["runs"] for r in rows}, record["baseline"], _task(first),
                                    record.get("bootstrap", 1000))
    main, _ = _metric_names(first, figs)
    raw, greater = _raw_metrics(first), comparison_stats.ranking_metric(_task(first))[1]
    on_front = set(_front(rows, figs, main, greater))
    plot_dir = reports_dir / record["name"]
    plot_dir.mkdir(parents=True, exist_ok=True)
    _plot(rows, figs, main, lambda r: training_peak(r) / 2**20, "training peak, live tensors (MiB)",
          plot_dir / PLOT_MEMORY, False, on_front, raw)
    _plot(rows, figs, main, lambda r: r["runs"][0]["metrics"]["trainable_params"], "trainable parameters",
          plot_dir / PLOT_PARAMS, True, set(), raw)
    path = reports_dir / f"{record['name']}.md"
    pairs = pair_differences(record, figs)  # once, for the markdown and the JSON
    rundir.write_atomic(path, render(record, rows, first, figs, pairs, record["name"]))
    rundir.write_json(reports_dir / f"{record['name']}.json", record | {"results": results_json(figs, record, pairs)})
    return path

"""One run, end to end: recipe -> data -> model (+ quantization) -> method -> train -> evaluate -> save -> report,
with the run directory's state kept honest on failure (python -m peftlab.run is the command)."""

from __future__ import annotations

import os
import shlex
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import transformers
from rich.console import Console
from rich.table import Table
from transformers import set_seed

from . import (
    building,
    checkpoints,
    distributed,
    evaluation,
    levers,
    measure,
    memory,
    models,
    plan,
    preflight,
    resume,
    run_report,
    rundir,
    speed,
    tracking,
)
from . import data as data_stage
from .errors import PeftlabError, check
from .evaluation import best_eval, eval_metrics
from .recipe import load_recipe, recipe_to_dict
from .tasks import get_task, metrics_for
from .training import build_trainer, train_seconds


@dataclass
class Options:
    """What `python -m peftlab.run` takes (its --help explains each)."""

    recipe: Path
    overrides: list[str] = field(default_factory=list)
    data_dir: str | None = None
    runs_dir: Path = Path("runs")
    reports_dir: str = "reports"  # "" skips the copy
    plan: bool = False
    budget: int | None = None
    resume: str | None = None
    base_cache: Path | None = None


def run(options: Options, argv: list[str], console: Console) -> int:
    """The run end to end, as `python -m peftlab.run` makes it (argv: its arguments, for the record and for the
    resume hint); returns the exit code: 0 done, 1 a --plan that does not fit, 2 an error, 130 interrupted.
    Failures are recorded in the run directory before the code is returned."""
    command = shlex.join(distributed.launch_command(argv))
    run_dir = None
    try:
        recipe = load_recipe(options.recipe, options.overrides)  # every check before anything is created
        data_root = data_stage.data_dir(options.data_dir)
        data_stage.preflight(recipe.data, data_root, get_task(recipe.model.task).columns(recipe))
        check(options.base_cache is None or hasattr(get_task(recipe.model.task), "Evaluation"),
              f"--base-cache: task {recipe.model.task!r} scores no base model before training; drop the option")
        distributed.start()  # the main process makes the choices every process shares, --plan's levers too
        if not distributed.is_main():
            console.quiet = True  # the main process reports for all
        if options.plan:  # predict and exit: nothing is trained or written
            inputs = building.prepare_inputs(recipe, data_root)
            recipe, predicted, auto, trimming = building.choose_levers(recipe, inputs, options.budget)
            console.print(levers.describe(levers.settings(recipe) | {"auto": auto, "trimming": trimming}),
                          highlight=False)
            if not distributed.is_main():  # the main process prints for all
                return 0 if plan.verdict(predicted, options.budget)[0] else 1
            return 0 if plan.print_plan(predicted, options.budget) else 1
        if options.budget is not None:  # micro-batch and checkpointing chosen to fit, before anything is created
            recipe = fit_budget(recipe, data_root, options.budget, console)
        reports_dir = Path(options.reports_dir) if options.reports_dir else None
        resuming, run_dir = distributed.share_from_main(lambda: open_run_dir(options, recipe, data_root, reports_dir))
        console.print(f"run directory: {run_dir}" + (f" ({resuming})" if resuming else ""))
        metrics = execute(recipe, options.recipe, run_dir, data_root, command, resuming, options.budget,
                          options.base_cache)
        if not distributed.is_main():
            return 0
        # "finished" only once everything is written, and the checkpoints go only after that: a failure before
        # leaves a failed run that --resume can still finish
        report = run_report.write(run_dir, reports_dir, finished=False)
        rundir.set_status(run_dir, rundir.FINISHED)
        rundir.remove_checkpoints(run_dir)
        console.print(summary_table(recipe, metrics, run_dir))
        console.print(f"report: {report}" + (f" (copied to {reports_dir}/{recipe.name}.md)" if reports_dir else ""))
        return 0
    except PeftlabError as err:
        record_failure(run_dir, "failed", str(err))
        console.print(f"[bold red]error:[/] {err}", highlight=False)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C: after a checkpoint (TrainingStopped) unless pressed twice
        record_failure(run_dir, "interrupted", str(err) or "interrupted by the user")
        console.print(f"interrupted{': ' + str(err) if str(err) else ''}", highlight=False)
        if run_dir is not None:
            console.print(f"resume with: {resume.command_line(argv, options.resume, run_dir)}", highlight=False)
        return 130
    except Exception as err:
        problem = preflight.storage_problem(err, run_dir)  # disk full, read-only: one line, resumable
        record_failure(run_dir, "failed", problem or f"{type(err).__name__}: {err}")
        if problem is None:
            raise
        console.print(f"[bold red]error:[/] {problem}", highlight=False)
        if run_dir is not None:
            console.print(f"resume with: {resume.command_line(argv, options.resume, run_dir)}", highlight=False)
        return 2
    finally:
        distributed.finish()


def fit_budget(recipe, data_root: Path | None, budget: int, console: Console):
    """The recipe with the micro-batch and checkpointing that make the plan's training peak fit the budget."""
    inputs = building.prepare_inputs(recipe, data_root)
    recipe, predicted = levers.fit_budget(recipe, lambda r: building.predict_memory(r, inputs), budget)
    chosen = levers.settings(recipe)
    console.print(f"--budget {measure.human_bytes(budget)}: micro-batch {chosen['micro_batch_size']}, gradient "
                  f"checkpointing {'on' if chosen['gradient_checkpointing'] else 'off'} (plan: "
                  f"{measure.human_bytes(predicted['predicted_train_peak_bytes'])})", highlight=False)
    return recipe


def execute(recipe, recipe_path: Path, run_dir: Path, data_root: Path | None, command: str,
            resuming: resume.Resume | None = None, budget: int | None = None, base_cache: Path | None = None) -> dict:
    started = time.perf_counter()
    main_process = distributed.is_main()  # with several processes only the main one writes
    onednn_cache = levers.limit_onednn_cache(budget)  # before anything computes
    set_seed(recipe.train.seed)
    if main_process and resuming is None:  # a resumed run keeps the records it started with (recipe checked equal)
        rundir.write_json(run_dir / "recipe.json", recipe_to_dict(recipe))
        shutil.copyfile(recipe_path, run_dir / "recipe.py")
    inputs = building.prepare_inputs(recipe, data_root)
    recipe, memory_plan, auto_levers, trimming = building.choose_levers(recipe, inputs, budget)
    task, resolved, tokenizer, splits = inputs.task, inputs.resolved, inputs.tokenizer, inputs.splits
    label_names, train_ds, eval_ds = inputs.labels, inputs.train, inputs.eval

    env = measure.environment() | {
        "command": command,
        "seed": recipe.train.seed,
        "model": {"source": resolved.source, "path": resolved.path, "fingerprint": models.weights_fingerprint(resolved),
                  "origin": resolved.origin},
        "data": {"source": splits.source, "files": splits.files, "train_examples": len(train_ds),
                 "selection_examples": len(splits.selection), "eval_examples": len(splits.eval)},
        "processes": distributed.world_size(),
        "speed": speed.settings(recipe),
        "levers": levers.settings(recipe) | {"budget": budget, "auto": auto_levers, "trimming": trimming,
                                             "allocator": levers.allocator_settings() | onednn_cache},
        "report_to": tracking.trackers(recipe.train.report_to),
    }
    if main_process:
        rundir.write_json(run_dir / "environment.json", resume.environment(resuming, env) if resuming else env)

    extra = task.Evaluation(inputs, recipe, base_cache) if hasattr(task, "Evaluation") else None  # before/after
    meter = memory.MemoryMeter(levers.trim_period(recipe))  # the base's evaluation before training: evaluation
    model = building.build_model(recipe, task, resolved, label_names,
                                 on_base=meter.during("eval", extra.before) if extra else None,
                                 batches=building.init_batches(recipe, task, tokenizer, train_ds))
    params = measure.count_parameters(model)
    quant_storage = measure.quantized_storage(model)
    trainer = build_trainer(recipe, task, model, tokenizer, train_ds, inputs.selection, run_dir / "checkpoints",
                            metrics_for(task, inputs.selection, splits.selection, label_names, recipe), label_names,
                            meter, run_dir=run_dir)
    checkpoints.train(trainer, resuming.checkpoint if resuming else None)
    seconds = train_seconds(trainer)  # over all processes of a resumed run
    state = trainer.state
    # the selected checkpoint (Trainer reloaded it) scores the reported and test splits, once each, every process
    # taking part as in its evaluations
    score = meter.during("eval", evaluation.score_split)  # module attribute: bench profiles it
    reported, records = score(trainer, task, eval_ds, splits.eval, label_names, recipe)
    test = score(trainer, task, inputs.test, splits.test, label_names, recipe) if inputs.test else None
    peak_rss = distributed.gather(meter.rss.whole_run())
    if not main_process:
        return {}
    rundir.write_json(run_dir / "log_history.json", state.log_history)
    final = best_eval(state.log_history, state.best_model_checkpoint)
    if extra:
        meter.during("eval", extra.after)(trainer.model)  # the best checkpoint, as Trainer reloaded it
    rundir.write_jsonl(run_dir / rundir.PREDICTIONS["reported"],
                       with_ids(records, splits.ids["eval"]) + (extra.records() if extra else []))
    if test:
        rundir.write_jsonl(run_dir / rundir.PREDICTIONS["test"], with_ids(test[1], splits.ids["test"]))

    recipe.method.save(trainer.model, run_dir)
    tokenizer.save_pretrained(run_dir / "tokenizer")
    epochs_done = state.global_step / max(1, -(-len(train_ds) // recipe.train.batch_size))
    samples = state.global_step * recipe.train.batch_size
    tokens = sum(train_ds["length"]) * epochs_done
    metrics = {
        "task_metrics": reported | (extra.task_metrics() if extra else {}),
        **({"test_metrics": test[0]} if test else {}),
        "selection_metrics": eval_metrics(final),
        "best_step": final.get("step"),
        "protocol": protocol(recipe, task, splits, state.log_history, final),
        "labels": label_names,
        **params,
        "quantized_storage": quant_storage,
        "steps": state.global_step,
        "epochs": epochs_done,
        "train_seconds": seconds,
        "train_samples_per_second": min(samples, len(train_ds) * epochs_done) / max(seconds, 1e-9),
        "train_tokens_per_second": tokens / max(seconds, 1e-9),
        "wall_seconds": time.perf_counter() - started,  # of this process (the last one, if resumed)
        "load_average_at_end": os.getloadavg()[0],
        "saved_bytes": measure.disk_bytes(run_dir / recipe.method.saves),
        **measure.peak_memory(meter.rss.whole_run()),
        **({"peak_rss_bytes_per_process": peak_rss} if len(peak_rss) > 1 else {}),
        "memory": meter.record(memory_plan, *plans_at_measured_batches(recipe, inputs, meter, memory_plan)),
        "memory_plan": memory_plan["parts"],
    } | (extra.record(run_dir) if extra else {})
    rundir.write_json(run_dir / "metrics.json", metrics)
    return metrics


def plans_at_measured_batches(recipe, inputs, meter, memory_plan) -> tuple:
    """The plan at the largest profiled batch (the live peak's) and at the largest other one (the RSS's): one plan
    when they are the same batch, as they usually are."""
    live, rss = meter.largest_batch(), meter.largest_batch(profiled=False)
    at_live = building.predict_memory_at(recipe, inputs, live, memory_plan)
    return at_live, at_live if rss == live else building.predict_memory_at(recipe, inputs, rss, memory_plan)


def with_ids(records: list[dict], ids: list) -> list[dict]:
    """Records of a scored part with the split's own ids (tasks give positions in the part)."""
    return [{**r, "id": ids[r["id"]]} for r in records]


def protocol(recipe, task, splits, log_history: list[dict], selected: dict) -> dict:
    """How the figures were obtained: which split selects the checkpoint, which is reported, n of N for each."""
    return {"data_seed": recipe.data.seed, "selection_metric": task.BEST_METRIC,
            "greater_is_better": getattr(task, "GREATER_IS_BETTER", True), "selected_step": selected.get("step"),
            "evaluations": sum("eval_loss" in e for e in log_history),
            "parts": {"reported" if part == "eval" else part: size for part, size in splits.sizes.items()}}


def summary_table(recipe, metrics: dict, run_dir: Path) -> Table:
    table = Table(title=f"{recipe.name} — {run_dir}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in metrics["task_metrics"].items():
        table.add_row(key, f"{value:.4f}")
    table.add_row("trainable params", f"{metrics['trainable_params']:,} ({metrics['trainable_percent']:.2f} %)")
    table.add_row("train time", f"{metrics['train_seconds']:.1f} s")
    table.add_row("samples/s", f"{metrics['train_samples_per_second']:.1f}")
    table.add_row("peak memory (RSS)", measure.human_bytes(metrics["peak_rss_bytes"]))
    return table


def quiet_libraries() -> None:
    """Our own progress display replaces the libraries' bars; their load reports go to the log level."""
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def open_run_dir(options: Options, recipe, data_root, reports_dir) -> tuple[resume.Resume | None, Path]:
    """Checks, then the run directory: a new one, or the interrupted run to resume (main process only)."""
    preflight.run_checks(recipe, options.runs_dir, reports_dir)
    resuming = resume.prepare(options.resume, options.runs_dir, recipe, data_root) if options.resume else None
    return resuming, resuming.run_dir if resuming else rundir.create(options.runs_dir, recipe.name)


def record_failure(run_dir: Path | None, state: str, message: str) -> None:
    if run_dir is None or not distributed.is_main():
        return
    try:
        rundir.write_atomic(run_dir / "traceback.txt", traceback.format_exc())
        rundir.set_status(run_dir, state, message.splitlines()[0] if message else state)
    except OSError:  # the disk is full or gone: the status stays "running", read as "interrupted" once we exit
        pass

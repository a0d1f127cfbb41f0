"""python -m peftlab.run RECIPE [--set a.b=value ...] — one run, end to end:
recipe -> data -> model (+ quantization) -> method -> train -> evaluate -> save -> report."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from . import data as data_stage
from . import checkpoints, distributed, heads, measure, models, plan, preflight, resume, rundir, speed
from . import report as report_stage
from .errors import PeftlabError
from .recipe import load_recipe, recipe_to_dict
from .tasks import get_task


def build_base(recipe, task, resolved, label_names, quantized: bool = True):
    """The base model with its task head: quantized if the recipe asks (head kept in full precision)."""
    from transformers import set_seed

    quant = recipe.quant if quantized else None
    quant_config = quant.bnb_config(list(task.HEADS) + list(getattr(task, "UNQUANTIZED", ()))) if quant else None
    set_seed(recipe.train.seed)  # the new task head is initialised from the seed
    model = models.load_model(resolved, recipe.model, task.MODEL_CLASS, quant_config, **task.model_kwargs(label_names))
    if recipe.model.head is not None:  # before any method wraps the model: the head trains and saves like the linear one
        heads.attach(model, recipe.model.head, task.HEADS)
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        from .quant import keep_one_weight_layout

        keep_one_weight_layout(model)  # else training after an evaluation gets wrong gradients on some CPUs
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def build_model(recipe, task, resolved, label_names, on_base=None):
    """The base wrapped with the recipe's method, adapters initialised from the seed. on_base(base), if given, sees
    the base before it is wrapped (causal_lm evaluates it there)."""
    from transformers import set_seed

    from .methods.base import Context

    model = build_base(recipe, task, resolved, label_names)
    if on_base is not None:
        on_base(model)
    present = tuple(h for h in task.HEADS if hasattr(model, h))
    set_seed(recipe.train.seed)  # whatever loading consumed, adapters start from the same state
    return recipe.method.wrap(model, Context(present, task.PEFT_TASK_TYPE, recipe.quant is not None, resolved.path))


@dataclass
class Inputs:
    """Everything known before the model is loaded."""

    task: object
    resolved: models.Resolved
    tokenizer: object
    splits: data_stage.Splits
    labels: list[str]
    train: object  # tokenized datasets.Dataset
    eval: object  # the reported split, scored once after training
    selection: object  # checkpoints are chosen on it (held out of train)
    test: object = None  # a labelled test split, scored once after training


def prepare_inputs(recipe, data_root: Path | None) -> Inputs:
    task = get_task(recipe.model.task)
    resolved = models.resolve(recipe.model.name, recipe.model.revision)
    tokenizer = models.load_tokenizer(resolved, recipe.model)
    splits = data_stage.load_splits(recipe.data, data_root)
    labels = task.labels(recipe, splits.train)
    train = task.prepare(splits.train, tokenizer, recipe, labels, "train")

    def scored(raw, split):
        return None if raw is None else speed.evaluation_order(task.prepare(raw, tokenizer, recipe, labels, split))

    return Inputs(task, resolved, tokenizer, splits, labels, train, scored(splits.eval, recipe.data.eval_split),
                  scored(splits.selection, "selection"), scored(splits.test, recipe.data.test_split))


def predict_memory(recipe, inputs: Inputs) -> dict:
    return plan.predict(recipe, inputs.task, inputs.resolved, inputs.labels, max(inputs.train["length"]))


def execute(recipe, recipe_path: Path, run_dir: Path, data_root: Path | None, command: str,
            resuming: resume.Resume | None = None) -> dict:
    from transformers import set_seed

    from .tasks import metrics_for
    from .training import best_eval, build_trainer, eval_metrics, score_split, train_seconds

    started = time.perf_counter()
    main_process = distributed.is_main()  # with several processes only the main one writes
    set_seed(recipe.train.seed)
    if main_process and resuming is None:  # a resumed run keeps the records it started with (recipe checked equal)
        rundir.write_json(run_dir / "recipe.json", recipe_to_dict(recipe))
        shutil.copyfile(recipe_path, run_dir / "recipe.py")
    inputs = prepare_inputs(recipe, data_root)
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
    }
    if main_process:
        rundir.write_json(run_dir / "environment.json", resume.environment(resuming, env) if resuming else env)

    memory_plan = predict_memory(recipe, inputs)
    extra = task.Evaluation(inputs, recipe) if hasattr(task, "Evaluation") else None  # before/after figures
    model = build_model(recipe, task, resolved, label_names, on_base=extra.before if extra else None)
    params = measure.count_parameters(model)
    quant_storage = measure.quantized_storage(model)
    trainer = build_trainer(recipe, task, model, tokenizer, train_ds, inputs.selection, run_dir / "checkpoints",
                            metrics_for(task, inputs.selection, splits.selection, label_names, recipe), label_names)
    checkpoints.train(trainer, resuming.checkpoint if resuming else None)
    seconds = train_seconds(trainer)  # over all processes of a resumed run
    state = trainer.state
    # the selected checkpoint (Trainer reloaded it) scores the reported and test splits, once each, every process
    # taking part as in its evaluations
    reported, records = score_split(trainer, task, eval_ds, splits.eval, label_names, recipe)
    test = score_split(trainer, task, inputs.test, splits.test, label_names, recipe) if inputs.test else None
    peak_rss = distributed.gather(measure.peak_memory()["peak_rss_bytes"])
    if not main_process:
        return {}
    rundir.write_json(run_dir / "log_history.json", state.log_history)
    final = best_eval(state.log_history, state.best_model_checkpoint)
    if extra:
        extra.after(trainer.model)  # the best checkpoint, as Trainer reloaded it
    rundir.write_jsonl(run_dir / rundir.PREDICTIONS["reported"],
                       with_ids(records, splits.ids["eval"]) + (extra.records() if extra else []))
    if test:
        rundir.write_jsonl(run_dir / rundir.PREDICTIONS["test"], with_ids(test[1], splits.ids["test"]))

    recipe.method.save(trainer.model, run_dir)
    tokenizer.save_pretrained(run_dir / "tokenizer")
    rundir.remove_checkpoints(run_dir)
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
        "saved_bytes": measure.disk_bytes(run_dir / recipe.method.saves),
        **measure.peak_memory(),
        **({"peak_rss_bytes_per_process": peak_rss} if len(peak_rss) > 1 else {}),
        "predicted_peak_bytes": memory_plan["predicted_peak_bytes"],
        "memory_plan": memory_plan["parts"],
    } | (extra.record(run_dir) if extra else {})
    rundir.write_json(run_dir / "metrics.json", metrics)
    return metrics


def with_ids(records: list[dict], ids: list) -> list[dict]:
    """Records of a scored part with the split's own ids (tasks give positions in the part)."""
    return [{**r, "id": ids[r["id"]]} for r in records]


def protocol(recipe, task, splits, log_history: list[dict], selected: dict) -> dict:
    """How the figures were obtained: which split selects the checkpoint, which is reported, n of N for each."""
    return {"data_seed": recipe.data.seed, "selection_metric": task.BEST_METRIC,
            "greater_is_better": getattr(task, "GREATER_IS_BETTER", True), "selected_step": selected.get("step"),
            "evaluations": sum("eval_loss" in e for e in log_history),
            "parts": {"reported" if part == "eval" else part: size for part, size in splits.sizes.items()}}


def summary_table(recipe, metrics: dict, run_dir: Path):
    from rich.table import Table

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
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m peftlab.run", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path, help="a recipes/*.py file defining `recipe = Recipe(...)`")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="a.b=value",
                        help="override a recipe field, e.g. --set train.epochs=2 --set method.r=16")
    parser.add_argument("--data-dir", default=None,
                        help=f"local data folder (default: ${data_stage.DATA_DIR_ENV}; unset: the Hub)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run directories go")
    parser.add_argument("--reports-dir", default="reports",
                        help="where the report and metrics are copied ('' to skip)")
    parser.add_argument("--plan", action="store_true", help="predict peak memory, say whether it fits, and exit")
    parser.add_argument("--budget", type=plan.parse_size, default=None,
                        help="memory budget for --plan, e.g. 16GiB (default: GPU memory, else physical memory)")
    parser.add_argument("--resume", nargs="?", const=resume.AUTO, default=None, metavar="RUN_DIR",
                        help="continue an interrupted or failed run from its last checkpoint (default: the newest "
                             "one of this recipe in --runs-dir); give the same recipe and --set options")
    args = parser.parse_args(argv)
    command = shlex.join(distributed.launch_command(argv))
    from rich.console import Console

    quiet_libraries()
    console = Console(stderr=True, soft_wrap=True)  # soft wrap: an error stays one line
    run_dir = None
    try:
        recipe = load_recipe(args.recipe, args.overrides)  # every check before anything is created
        data_root = data_stage.data_dir(args.data_dir)
        data_stage.preflight(recipe.data, data_root, get_task(recipe.model.task).columns(recipe))
        if args.plan:  # predict and exit: nothing is trained or written
            return 0 if plan.print_plan(predict_memory(recipe, prepare_inputs(recipe, data_root)), args.budget) else 1
        reports_dir = Path(args.reports_dir) if args.reports_dir else None
        distributed.start()
        resuming, run_dir = distributed.share_from_main(lambda: open_run_dir(args, recipe, data_root, reports_dir))
        if not distributed.is_main():
            console.quiet = True  # the main process reports for all
        console.print(f"run directory: {run_dir}" + (f" ({resuming})" if resuming else ""))
        metrics = execute(recipe, args.recipe, run_dir, data_root, command, resuming)
        if not distributed.is_main():
            return 0
        rundir.set_status(run_dir, rundir.FINISHED)
        report = report_stage.write(run_dir, reports_dir)
        console.print(summary_table(recipe, metrics, run_dir))
        console.print(f"report: {report}" + (f" (copied to {reports_dir}/{recipe.name}.md)" if reports_dir else ""))
        return 0
    except PeftlabError as err:
        _record_failure(run_dir, "failed", str(err))
        console.print(f"[bold red]error:[/] {err}", highlight=False)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C: after a checkpoint (TrainingStopped) unless pressed twice
        _record_failure(run_dir, "interrupted", str(err) or "interrupted by the user")
        console.print(f"interrupted{': ' + str(err) if str(err) else ''}", highlight=False)
        if run_dir is not None:
            console.print(f"resume with: {resume.command_line(argv, args.resume, run_dir)}", highlight=False)
        return 130
    except Exception as err:
        problem = preflight.storage_problem(err, run_dir)  # disk full, read-only: one line, resumable
        _record_failure(run_dir, "failed", problem or f"{type(err).__name__}: {err}")
        if problem is None:
            raise
        console.print(f"[bold red]error:[/] {problem}", highlight=False)
        if run_dir is not None:
            console.print(f"resume with: {resume.command_line(argv, args.resume, run_dir)}", highlight=False)
        return 2


def open_run_dir(args, recipe, data_root, reports_dir) -> tuple[resume.Resume | None, Path]:
    """Checks, then the run directory: a new one, or the interrupted run to resume (main process only)."""
    preflight.run_checks(recipe, args.runs_dir, reports_dir)
    resuming = resume.prepare(args.resume, args.runs_dir, recipe, data_root) if args.resume else None
    return resuming, resuming.run_dir if resuming else rundir.create(args.runs_dir, recipe.name)


def _record_failure(run_dir: Path | None, state: str, message: str) -> None:
    if run_dir is None or not distributed.is_main():
        return
    try:
        rundir.write_atomic(run_dir / "traceback.txt", traceback.format_exc())
        rundir.set_status(run_dir, state, message.splitlines()[0] if message else state)
    except OSError:  # the disk is full or gone: the status stays "running", read as "interrupted" once we exit
        pass


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

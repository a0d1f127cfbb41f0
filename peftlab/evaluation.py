"""Scoring a model on a recipe's reported split as training evaluates it (same collator, metrics and loss), per
example (records, predictions.jsonl) and in total, and reading the evaluations Trainer logged."""

from __future__ import annotations

import torch
from transformers import TrainingArguments

from . import data as data_stage
from . import levers
from .losses import compute_loss_func
from .speed import evaluation_order
from .training import make_trainer


def eval_inputs(trained, data_root):
    """The raw reported split and its tokenized features, as the run prepared them (trained: artifacts.Trained)."""
    recipe = trained.recipe
    splits = data_stage.load_splits(recipe.data, data_root)
    features = trained.task.prepare(splits.eval, trained.tokenizer, recipe, trained.labels, recipe.data.eval_split)
    return splits.eval, evaluation_order(features)


def evaluate(model, recipe, task, tokenizer, labels, raw_eval, eval_ds) -> dict:
    """Task metrics and loss of `model` on the prepared reported split (eval_inputs)."""
    batch_size = levers.eval_batch_size(recipe, getattr(model.config, "num_hidden_layers", 1))  # as in training
    args = TrainingArguments(output_dir="/tmp/peftlab-predict", per_device_eval_batch_size=batch_size,
                             report_to=[], disable_tqdm=True, use_cpu=not torch.cuda.is_available())
    trainer = make_trainer(model, labelled_logits=getattr(task, "LABELLED_LOGITS", False), args=args,
                           data_collator=task.collator(tokenizer),
                           compute_loss_func=compute_loss_func(recipe.train.loss, labels),  # as in training
                           preprocess_logits_for_metrics=getattr(task, "preprocess_logits", None))
    return score_split(trainer, task, eval_ds, raw_eval, labels, recipe)[0]


def evaluate_split(trained, data_root, prepared=None) -> dict:
    """Score a loaded run or export (artifacts.Trained); `prepared` = its eval_inputs when the caller has them."""
    raw_eval, eval_ds = prepared or eval_inputs(trained, data_root)
    return evaluate(trained.model, trained.recipe, trained.task, trained.tokenizer, trained.labels, raw_eval, eval_ds)


def eval_metrics(logs: dict) -> dict:
    """Task metrics and loss from an evaluation log entry, without the "eval_" prefix and timing keys."""
    timing = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_model_preparation_time")
    return {k[5:]: v for k, v in logs.items() if k.startswith("eval_") and k not in timing}


def best_eval(log_history: list[dict], best_checkpoint: str | None) -> dict:
    """The evaluation record of the checkpoint Trainer loaded as best (or the last one)."""
    evals = [e for e in log_history if "eval_loss" in e]
    if best_checkpoint:
        step = int(best_checkpoint.rstrip("/").rsplit("-", 1)[-1])
        evals = [e for e in evals if e["step"] == step] or evals
    return evals[-1] if evals else {}


def score_split(trainer, task, features, raw, labels: list[str], recipe) -> tuple[dict, list[dict]]:
    """Score prepared `features` once with the trainer's model: (loss and task metrics, per-example records).
    The metrics are the records' (task.score_predictions), exactly what predictions.jsonl reproduces."""
    from transformers import EvalPrediction

    selection_metrics, trainer.compute_metrics = trainer.compute_metrics, None  # they fit the selection split only
    try:
        out = trainer.predict(features, metric_key_prefix="eval")
    finally:
        trainer.compute_metrics = selection_metrics
    records = task.records_for(features, raw, labels, recipe)(EvalPrediction(out.predictions, out.label_ids))
    return eval_metrics(out.metrics) | task.score_predictions(records), records

"""One module per task. Each exposes the same names:

MODEL_CLASS, PEFT_TASK_TYPE, BEST_METRIC, HEADS (task-head module names, kept trainable and never quantized),
columns(recipe) (data columns it reads), labels(recipe, train), model_kwargs(labels), prepare(dataset, tokenizer, recipe, labels, split),
collator(tokenizer), predict(model, tokenizer, texts, labels, max_length) (qa also takes context=, stride=, n_best=,
max_answer_length=), and the two halves of scoring:
- records_for(features, raw, labels, recipe) -> records(eval_pred): the per-example records of an evaluation of
  `features` (prepared from the raw examples `raw`; each feature carries its raw example's index in `example_id`),
  `id` = that index, sorted by it; a run maps it to the split's own id when it writes predictions.jsonl (the
  fields per task are listed in README.md). QA needs the features, the raw examples and the recipe's decoding settings to decode spans.
- score_predictions(records) -> dict: the task metrics from records alone, so that a resample of them (bootstrap)
  or a reloaded predictions.jsonl gives its corpus-level figures (entity F1, Pearson, perplexity from sums).
Trainer's compute_metrics is the two composed (metrics_for below): one scoring path for every figure.

Optional (causal_lm has them): GREATER_IS_BETTER (for BEST_METRIC, default True), UNQUANTIZED (modules besides
the heads kept out of 4/8-bit quantization),
RAW_METRICS (metrics that are not fractions), preprocess_logits (Trainer's preprocess_logits_for_metrics) and
Evaluation(inputs, recipe, base_cache) (extra figures before and after training, see pipeline.execute).
"""

from importlib import import_module

TASK_MODULES = {
    "classification": "classification",
    "regression": "regression",
    "token_classification": "token_classification",
    "qa": "qa",
    "causal_lm": "causal_lm",
}


def get_task(name: str):
    from ..errors import check

    check(name in TASK_MODULES, f"model.task={name!r} is not implemented yet; available: {', '.join(TASK_MODULES)}")
    return import_module(f"{__name__}.{TASK_MODULES[name]}")


def require_fast_tokenizer(tokenizer, task: str, needs: str) -> None:
    """Tasks that map word pieces back to words or characters need a fast (Rust) tokenizer."""
    from ..errors import check

    check(tokenizer.is_fast, f"{type(tokenizer).__name__} is a slow tokenizer: {task} needs {needs} from a fast "
                             "tokenizer; use a model that ships tokenizer.json")


def mixed(adapter_names: list[str] | None) -> dict:
    """The predict/model argument for a batch whose rows use different peft adapters (one name per row); nothing
    otherwise, so that tasks that take no such argument are called as before."""
    return {} if adapter_names is None else {"adapter_names": adapter_names}


def metrics_for(task, features, raw, labels: list[str], recipe):
    """Trainer's compute_metrics for an evaluation of `features`: its records, scored."""
    records = task.records_for(features, raw, labels, recipe)
    return lambda eval_pred: task.score_predictions(records(eval_pred))

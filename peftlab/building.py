"""Building the model a recipe describes: the base (quantized if asked, with its task head), wrapped with the
recipe's method; and the inputs known before the model is loaded (task, tokenizer, tokenized splits)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peft import prepare_model_for_kbit_training
from transformers import set_seed

from . import data as data_stage
from . import distributed, heads, levers, models, plan, speed
from .methods.base import Context
from .quant import full_precision_modules, keep_one_weight_layout
from .tasks import get_task


def build_base(recipe, task, resolved, label_names, quantized: bool = True):
    """The base model with its task head: quantized if the recipe asks (the head, and what the method trains in full,
    kept in full precision)."""
    quant = recipe.quant if quantized else None
    quant_config = quant.bnb_config(full_precision_modules(task, recipe.method)) if quant else None
    set_seed(recipe.train.seed)  # the new task head is initialised from the seed
    model = models.load_model(resolved, recipe.model, task.MODEL_CLASS, quant_config, **task.model_kwargs(label_names))
    if recipe.model.head is not None:  # before any method wraps the model: the head trains and saves like the linear one
        heads.attach(model, recipe.model.head, task.HEADS)
    if quant is not None:
        keep_one_weight_layout(model)  # else training after an evaluation gets wrong gradients on some CPUs
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def build_model(recipe, task, resolved, label_names, on_base=None, batches=None):
    """The base wrapped with the recipe's method, adapters initialised from the seed. on_base(base), if given, sees
    the base before it is wrapped (causal_lm evaluates it there); batches() (init_batches) gives the few training
    batches that data-fitted initialisations (LoRA's eva, corda) are computed on."""
    model = build_base(recipe, task, resolved, label_names)
    if on_base is not None:
        on_base(model)
    present = tuple(h for h in task.HEADS if hasattr(model, h))
    set_seed(recipe.train.seed)  # whatever loading consumed, adapters start from the same state
    return recipe.method.wrap(model, Context(present, task.PEFT_TASK_TYPE, recipe.quant is not None, resolved.path,
                                             batches))


# inputs a model's forward takes; Trainer drops the other columns (length, ids) the same way
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def init_batches(recipe, task, tokenizer, train, count: int = 8):
    """A function giving the first `count` training batches (inputs only, padded by the task's collator): what a
    data-fitted initialisation sees, the same for every seed of a recipe."""
    def batches() -> list[dict]:
        collate, size = task.collator(tokenizer), recipe.train.batch_size
        rows = train.select_columns([c for c in MODEL_INPUTS if c in train.column_names])
        chunks = [rows.select(range(i, min(i + size, len(rows)))) for i in range(0, min(len(rows), count * size), size)]
        return [{k: v for k, v in collate(list(chunk)).items() if k in MODEL_INPUTS} for chunk in chunks]

    return batches


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
    """The plan for the worst batch the recipe can meet (micro-batch x its longest training example): what a budget
    is checked against, before training."""
    return plan.predict(recipe, inputs.task, inputs.resolved, inputs.labels, max(inputs.train["length"]))


def choose_levers(recipe, inputs, budget: int | None) -> tuple:
    """(the recipe with its "auto" levers resolved, its memory plan, the checkpointing choice for the records or
    None): a run without --budget (which chose its levers already) checkpoints only where the plan without it does
    not fit the memory available now, and trims freed memory after every step only where the plan's RSS leaves too
    little room (levers.choose_trimming; its grounds in levers.settings' "trimming"). The main process chooses, so
    every process of a run trains alike."""
    recipe, memory_plan, choice = _choose_checkpointing(recipe, inputs, budget)
    trimming = distributed.share_from_main(lambda: levers.choose_trimming(recipe, memory_plan,
                                                                          plan.available_memory()[0], budget))
    return levers.with_trimming(recipe, trimming["trim_memory"]), memory_plan, choice, trimming


def _choose_checkpointing(recipe, inputs, budget: int | None) -> tuple:
    if budget is not None or not levers.automatic_checkpointing(recipe):
        return recipe, predict_memory(recipe, inputs), None
    traced = {}  # the plan the choice was made with, kept: tracing one costs seconds

    def predict(candidate):
        traced[levers.gradient_checkpointing(candidate)] = predict_memory(candidate, inputs)
        return traced[levers.gradient_checkpointing(candidate)]

    choice = distributed.share_from_main(lambda: levers.choose_checkpointing(recipe, predict,
                                                                             plan.available_memory()[0]))
    recipe = levers.with_levers(recipe, levers.micro_batch_size(recipe), choice["gradient_checkpointing"])
    chosen = traced.get(choice["gradient_checkpointing"])  # other processes of a DDP run trace their own
    return recipe, chosen or predict_memory(recipe, inputs), choice


def predict_memory_at(recipe, inputs: Inputs, largest: dict, before: dict) -> dict | None:
    """The plan again for the largest batch training met (`largest`: tokens and sequence), the process before the
    model as `before` (the first plan) saw it: the like-for-like figure for the measured peak, since sampled
    batches rarely reach the worst case. None where no step was profiled."""
    if not largest["tokens"]:
        return None
    rows = largest["tokens"] // largest["sequence"]
    if (rows, min(largest["sequence"], recipe.data.max_length)) == (before["batch"], before["sequence"]):
        return before
    return plan.predict(recipe, inputs.task, inputs.resolved, inputs.labels, largest["sequence"], batch=rows,
                        runtime=before["parts"]["runtime"])

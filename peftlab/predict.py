"""python -m peftlab.predict RUN_OR_EXPORT "text" ... — predictions from a finished run or a merged export.

--eval scores the run's evaluation split again from the reloaded weights: it must match the run's report
(a reload that lost the trained head would not)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import PeftlabError, cli_exit_code


def eval_inputs(trained, data_root):
    """The raw evaluation split and its tokenized features, as the run prepared them."""
    from . import data as data_stage
    from .speed import evaluation_order

    recipe = trained.recipe
    splits = data_stage.load_splits(recipe.data, data_root)
    features = trained.task.prepare(splits.eval, trained.tokenizer, recipe, trained.labels, recipe.data.eval_split)
    return splits.eval, evaluation_order(features)


def evaluate_split(trained, data_root, prepared=None) -> dict:
    """Score the evaluation split; `prepared` = eval_inputs(...) when the caller already has them."""
    return score_with_records(trained, data_root, prepared)[0]


def score_with_records(trained, data_root, prepared=None) -> tuple[dict, list[dict]]:
    """Metrics and per-example records of the evaluation split (records' ids: positions in the raw split)."""
    from transformers import TrainingArguments

    from .losses import compute_loss_func
    from .training import make_trainer, score_split

    recipe, task = trained.recipe, trained.task
    raw_eval, eval_ds = prepared or eval_inputs(trained, data_root)
    args = TrainingArguments(output_dir="/tmp/peftlab-predict", per_device_eval_batch_size=recipe.train.eval_batch_size,
                             report_to=[], disable_tqdm=True, use_cpu=not __import__("torch").cuda.is_available())
    trainer = make_trainer(trained.model, args=args, data_collator=task.collator(trained.tokenizer),
                           compute_loss_func=compute_loss_func(recipe.train.loss, trained.labels),  # as in training
                           preprocess_logits_for_metrics=getattr(task, "preprocess_logits", None))
    scored = score_split(trainer, task, eval_ds, raw_eval, trained.labels, recipe)
    # accelerate marks the model it prepared and will not prepare it again: a causal LM's base, scored here before
    # training (tasks/causal_lm.Evaluation), would then train without DistributedDataParallel in a multi-process
    # run, each process on its own gradients. peft's wrapper would inherit the mark from the base it wraps.
    vars(trained.model).pop("_is_accelerate_prepared", None)
    return scored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftlab.predict", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run directory or a peftlab.merge export folder")
    parser.add_argument("texts", nargs="*", help="inputs to predict")
    parser.add_argument("--eval", action="store_true", help="re-score the run's evaluation split")
    parser.add_argument("--data-dir", default=None, help="local data folder (default: $PEFTLAB_DATA_DIR)")
    parser.add_argument("--context", default=None, help="question answering: the passage the texts (questions) "
                                                        "are answered from")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="causal_lm: longest generation in tokens (default: the recipe's data.max_new_tokens)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="causal_lm: 0 decodes greedily (default); above 0 samples at that temperature")
    args = parser.parse_intermixed_args(argv)  # texts may come before or after the options
    from .run import quiet_libraries

    quiet_libraries()
    return cli_exit_code(lambda: _predict(args))


def _task_options(trained, args) -> dict:
    """Extra predict() arguments: question answering reads a context and decodes as the run was evaluated;
    a causal LM renders prompts as in training and generates; regression scores go back to the data's scale."""
    context, task, data = args.context, trained.recipe.model.task, trained.recipe.data
    if (args.max_new_tokens is not None or args.temperature) and task != "causal_lm":
        raise PeftlabError(f"--max-new-tokens and --temperature are for causal_lm runs; this run's task is {task}")
    if task == "causal_lm" and context is None:
        return {"data": data, "max_new_tokens": args.max_new_tokens or data.max_new_tokens,
                "temperature": args.temperature}
    if task != "qa":
        if context is not None:
            raise PeftlabError(f"--context is for question answering runs; this run's task is {trained.recipe.model.task}")
        return {"label_scale": data.label_scale} if task == "regression" else {}
    return {"context": context, "stride": data.stride, "n_best": data.n_best, "max_answer_length": data.max_answer_length}


def _predict(args) -> None:
    from . import data as data_stage
    from .loading import load_any

    if not args.texts and not args.eval:
        raise PeftlabError("nothing to do: give texts to predict, or --eval to re-score the evaluation split")
    data_root = data_stage.data_dir(args.data_dir) if args.eval else None
    trained = load_any(args.run)
    if args.texts:
        for row in trained.task.predict(trained.model, trained.tokenizer, args.texts, trained.labels,
                                        trained.recipe.data.max_length, **_task_options(trained, args)):
            print(json.dumps(row))
    if args.eval:
        print(json.dumps({"eval": evaluate_split(trained, data_root)}))


if __name__ == "__main__":
    sys.exit(main())

"""Predictions from a loaded run or export (artifacts.Trained): texts given one by one, or every row of a JSON lines,
CSV or TSV file in batches, written as JSON lines in input order with the same fields; and whether a data folder
holds the data the run was evaluated on, before its evaluation split is scored again."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import data as data_stage
from . import levers, rundir
from .artifacts import recorded_data_files
from .errors import PeftlabError, check
from .tasks import mixed

INPUT_SUFFIXES = (".jsonl", ".csv", ".tsv")


def task_options(trained, context=None, max_new_tokens: int | None = None, temperature: float = 0.0) -> dict:
    """Extra task.predict() arguments: question answering reads a context and decodes as the run was evaluated;
    a causal LM renders prompts as in training and generates; regression scores go back to the data's scale."""
    task, data = trained.recipe.model.task, trained.recipe.data
    if (max_new_tokens is not None or temperature) and task != "causal_lm":
        raise PeftlabError(f"--max-new-tokens and --temperature are for causal_lm runs; this run's task is {task}")
    if task == "causal_lm" and context is None:
        return {"data": data, "max_new_tokens": max_new_tokens or data.max_new_tokens, "temperature": temperature}
    if task != "qa":
        if context is not None:
            raise PeftlabError(f"--context is for question answering runs; this run's task is {task}")
        return {"label_scale": data.label_scale} if task == "regression" else {}
    return {"context": context, "stride": data.stride, "n_best": data.n_best, "max_answer_length": data.max_answer_length}


def predict_texts(trained, texts: list[str], adapter_names: list[str] | None = None, **options) -> list[dict]:
    """One record per text, as the task gives it (options: task_options' keywords). adapter_names: one peft adapter
    per text, for a mixed batch (serving.mixable says which tasks take it)."""
    return trained.task.predict(trained.model, trained.tokenizer, texts, trained.labels,
                                trained.recipe.data.max_length, **task_options(trained, **options),
                                **mixed(adapter_names))


# ------------------------------------------------------------------------------------------ from a file

def check_paths(source: Path, out: Path) -> None:
    """What can be checked before the model is loaded: an input of a known kind, a writable place for the output."""
    check(source.suffix in INPUT_SUFFIXES, f"--input {source}: unknown file type '{source.suffix}'; give a "
                                           f"{', '.join(INPUT_SUFFIXES)} file")
    check(source.is_file(), f"--input {source}: no such file; give an existing {', '.join(INPUT_SUFFIXES)} file")
    check(not out.is_dir(), f"--output {out} is a folder; give a file name, e.g. {out / 'predictions.jsonl'}")
    folder = out.parent
    check(folder.is_dir() and os.access(folder, os.W_OK), f"--output {out}: cannot write in {folder} (missing or "
                                                          "read-only); create it or choose another --output")


def input_columns(recipe, context_given: bool) -> dict[str, str]:
    """The columns a file must have (column -> the recipe field naming it): the recipe's text, and its text_pair
    (the second sentence; for question answering the context, which --context may give for all rows instead)."""
    data = recipe.data
    columns = {data.text: "data.text"}
    if data.text_pair and not (recipe.model.task == "qa" and context_given):
        columns[data.text_pair] = "data.text_pair"
    return columns


def _as_text(value) -> str | None:
    """A cell as text: word lists (CoNLL-style "tokens") are joined with spaces, as one-by-one predict splits them."""
    if isinstance(value, list):
        return " ".join(map(str, value))
    return None if value is None else str(value)


def read_inputs(recipe, source: Path, context: str | None) -> tuple[list[str], list[str] | None]:
    """The texts to predict, as one-by-one predict takes them (sentence pairs joined by a TAB), and for question
    answering one context per question (None when --context gives one for all)."""
    data_stage.require_utf8(source)
    check(data_stage.has_rows(source), f"--input {source}: no rows to predict (an empty file"
                                       f"{' or a header only' if source.suffix != '.jsonl' else ''}); give a file "
                                       "with at least one row")
    rows = data_stage.read_file(source)
    columns = input_columns(recipe, context is not None)
    missing = [c for c in columns if c not in rows.column_names]
    check(not missing, f"--input {source}: no column {', '.join(repr(c) for c in missing)} (columns: "
                       f"{', '.join(rows.column_names)}); this run reads "
                       f"{', '.join(f'{c!r} ({field})' for c, field in columns.items())}: rename the columns")
    values = {column: [_as_text(v) for v in rows[column]] for column in columns}
    for column, texts in values.items():
        empty = [i for i, text in enumerate(texts, 1) if text is None or not text.strip()]
        check(not empty, f"--input {source}, row {empty[0] if empty else ''}: empty '{column}' ({len(empty)} such "
                         "rows); fill or remove them")
    texts, pair = values[recipe.data.text], values.get(recipe.data.text_pair)
    if recipe.model.task == "qa":
        return texts, pair
    return (texts if pair is None else [f"{a}\t{b}" for a, b in zip(texts, pair)]), None


def batch_size(trained) -> int:
    """As the run evaluated (levers): generation batches for a causal LM, evaluation batches otherwise."""
    recipe = trained.recipe
    if recipe.model.task == "causal_lm":
        return levers.generation_batch_size(recipe)
    return levers.eval_batch_size(recipe, getattr(trained.model.config, "num_hidden_layers", 1))


def predict_file(trained, source: Path, out: Path, context: str | None = None, **options) -> int:
    """Predict every row of `source` and write one record per row to `out` (JSON lines, input order), atomically:
    a failure leaves no file behind. Rows go in batches of similar length (less padding). Returns the row count."""
    texts, contexts = read_inputs(trained.recipe, source, context)
    fixed = task_options(trained, context=context, **options)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + (len(contexts[i]) if contexts else 0))
    size, results = batch_size(trained), [None] * len(texts)
    with Progress(TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True)) as progress:
        bar = progress.add_task("predict", total=len(texts))
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            per_row = {"context": [contexts[i] for i in chunk]} if contexts else {}
            rows = trained.task.predict(trained.model, trained.tokenizer, [texts[i] for i in chunk], trained.labels,
                                        trained.recipe.data.max_length, **(fixed | per_row))
            for i, row in zip(chunk, rows):
                results[i] = row
            progress.advance(bar, len(chunk))
    try:
        rundir.write_jsonl(out, results)
    except OSError as err:
        raise PeftlabError(f"--output {out}: cannot write ({err.strerror}); choose another --output") from None
    return len(results)


# ------------------------------------------------------------------------------------------ --eval

def eval_data_differences(trained, data_root: Path | None) -> list[str]:
    """The evaluation split's files under data_root whose md5 differs from the one the run recorded: scoring them
    would not reproduce the run's figures (the scores would be of other data)."""
    data = trained.recipe.data
    return data_stage.changed_files(data, data_root, recorded_data_files(trained.run_dir), [data.eval_split])

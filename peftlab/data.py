"""Raw splits from the Hub (online) or from a local data folder (offline), with file hashes for the record.

Local layout: <data_dir>/<folder>/<split>.{tsv,csv,jsonl,json,conll}, where <folder> is the last part of
the dataset name ("glue/sst2" -> "sst2"), or Data(name=...) itself when it is a folder.
Task-specific preprocessing (tokenizing, label alignment) lives with each task in peftlab/tasks/.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PeftlabError, check

DATA_DIR_ENV = "PEFTLAB_DATA_DIR"
SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".conll")
# "glue/<task>" is the usual way to name a GLUE task; on the Hub it is config <task> of nyu-mll/glue.
HUB_SHORTCUTS = {"glue": "nyu-mll/glue"}
# Local folder names whose Hub dataset has another id (the Hub copies also name their splits differently:
# rajpurkar/squad has train/validation, leondz/wnut_17 stores tags as class ids in "ner_tags").
HUB_IDS = {"wnut17": "leondz/wnut_17", "squad_v1.1": "rajpurkar/squad"}
HUB_CONFIGS = {"openai/gsm8k": "main"}  # Hub datasets that need a config name


@dataclass
class Splits:
    train: object  # datasets.Dataset
    eval: object
    source: str  # "local:<folder>" or "hub:<id>"
    files: dict = field(default_factory=dict)  # file name -> md5 (local data only)
    generate: object = None  # prompts answered by generation (causal_lm's data.generate_split), or None


def data_dir(cli_value: str | None = None) -> Path | None:
    value = cli_value or os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    check(path.is_dir(), f"data directory {path} does not exist: fix --data-dir or ${DATA_DIR_ENV}")
    return path


def local_folder(name: str, root: Path | None) -> Path | None:
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    if root is None:
        return None
    folder = root / name.rstrip("/").split("/")[-1]
    check(folder.is_dir(), f"dataset {name}: no folder {folder}; put the files there or fix --data-dir/${DATA_DIR_ENV}")
    return folder


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def split_file(folder: Path, split: str) -> Path:
    for suffix in SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    found = sorted(p.name for p in folder.iterdir() if p.suffix in SUFFIXES)
    raise PeftlabError(f"split '{split}' not found in {folder} (files: {', '.join(found) or 'none'}); "
                       f"set data.train_split/data.eval_split to one of them")


def require_utf8(path: Path) -> None:
    """Every reader here decodes UTF-8; another encoding would surface as a UnicodeDecodeError deep inside them."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise PeftlabError(f"{path}:{line}: not UTF-8 text (byte {raw[err.start]:#04x}); save the file as UTF-8, "
                           f"e.g. iconv -f latin1 -t utf-8 {path.name}") from None


def _header_columns(path: Path) -> list[str] | None:
    """Column names from the first line of a local file, without reading the rest."""
    require_utf8(path)
    with open(path, encoding="utf-8") as fh:
        first = fh.readline().rstrip("\n")
    if path.suffix in (".tsv", ".csv"):
        return first.split("\t" if path.suffix == ".tsv" else ",")
    if path.suffix == ".jsonl":
        import json

        try:
            return list(json.loads(first))
        except ValueError:
            raise PeftlabError(f"{path}:1: not a JSON object per line; fix the file") from None
    return None  # .json / .conll: structure checked when read


def _has_rows(path: Path) -> bool:
    """A line after the header (CSV/TSV) or a first line (JSON lines) that is not blank."""
    with open(path, encoding="utf-8") as fh:
        lines = (line for line in fh if line.strip())
        next(lines, None)
        return path.suffix == ".jsonl" or next(lines, None) is not None


def preflight(data, root: Path | None, columns: list[str]) -> None:
    """Cheap checks before a run directory exists: folder, split files and columns of local data."""
    folder = local_folder(data.name, root)
    if folder is None:
        return  # Hub data is checked when loaded
    for split in dict.fromkeys(s for s in (data.train_split, data.eval_split, data.generate_split) if s):
        path = split_file(folder, split)
        found = _header_columns(path)
        check(found is None or _has_rows(path), f"{path}: the split is empty (a header and no examples); "
                                                "supply a file with at least one example")
        missing = [c for c in columns if found is not None and c not in found]
        check(not missing, f"{path.name}: no column {', '.join(map(repr, missing))} (columns: {', '.join(found or [])}); "
                           "set data.text/data.label to the right names")


def read_conll(path: Path):
    """CoNLL: `token<TAB>tag` per line, a blank line between sentences. (datasets has no CoNLL loader.)"""
    from datasets import Dataset

    tokens, tags, sentences = [], [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            if tokens:
                sentences.append({"tokens": tokens, "tags": tags})
            tokens, tags = [], []
            continue
        parts = line.split("\t")
        check(len(parts) == 2, f"{path}:{lineno}: expected 'token<TAB>tag', got {line!r}")
        tokens.append(parts[0])
        tags.append(parts[1])
    if tokens:
        sentences.append({"tokens": tokens, "tags": tags})
    check(bool(sentences), f"{path}: the split is empty; supply a file with at least one example")
    return Dataset.from_list(sentences)


def read_squad(path: Path):
    """Official SQuAD JSON ({"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}), flattened to one
    row per question like the Hub's `rajpurkar/squad`: id, title, context, question, answers{text, answer_start}.
    None when the file has another shape (then it is read as plain JSON / JSON lines)."""
    import json

    from datasets import Dataset

    try:
        articles = json.loads(path.read_text(encoding="utf-8"))["data"]
        if not (isinstance(articles, list) and articles and "paragraphs" in articles[0]):
            return None
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    rows = []
    try:
        for article in articles:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    answers = qa.get("answers", [])
                    rows.append({"id": str(qa["id"]), "title": article.get("title", ""),
                                 "context": paragraph["context"], "question": qa["question"],
                                 "answers": {"text": [a["text"] for a in answers],
                                             "answer_start": [int(a["answer_start"]) for a in answers]}})
    except (KeyError, TypeError, ValueError) as err:
        raise PeftlabError(f"{path}: not valid SQuAD JSON near question {len(rows)} ({type(err).__name__}: {err}); "
                           "each paragraph needs 'context' and 'qas' with 'id', 'question' and 'answers'") from None
    check(bool(rows), f"{path}: no questions in this SQuAD file; supply a file with at least one")
    return Dataset.from_list(rows)


def read_file(path: Path):
    from datasets import load_dataset

    require_utf8(path)
    if path.suffix == ".conll":
        return read_conll(path)
    if path.suffix == ".json" and (squad := read_squad(path)) is not None:
        return squad
    if path.suffix in (".tsv", ".csv"):
        # quoting=3 (QUOTE_NONE): these files carry raw quote characters; na_filter off keeps "null"/"NA" text.
        dataset = load_dataset("csv", data_files=str(path), split="train",
                               delimiter="\t" if path.suffix == ".tsv" else ",",
                               quoting=3, keep_default_na=False, na_filter=False)
    else:
        from datasets.exceptions import DatasetGenerationError

        try:
            dataset = load_dataset("json", data_files=str(path), split="train")
        except (DatasetGenerationError, StopIteration) as err:  # not JSON (the cause says where), or an empty file
            cause = err.__cause__ or err
            detail = str(cause).strip().splitlines()[0][:120] if str(cause).strip() else "an empty file"
            raise PeftlabError(f"{path}: not readable as JSON or JSON lines ({detail}); fix the file") from None
    check(len(dataset) > 0, f"{path}: the split is empty; supply a file with at least one example")
    return dataset


HOLDOUT_SEED = 0  # held-out examples must not change with the training seed: every run evaluates on the same ones


def load_splits(data, root: Path | None, seed: int) -> Splits:
    folder = local_folder(data.name, root)
    if folder is not None:
        paths = {split: split_file(folder, split) for split in (data.train_split, data.eval_split, data.generate_split)
                 if split}
        read = {split: read_file(path) for split, path in paths.items()}
        files = {f"{folder.name}/{p.name}": md5(p) for p in paths.values()}
        splits = Splits(read[data.train_split], read[data.eval_split], f"local:{folder}", files,
                        read.get(data.generate_split))
    else:
        splits = _load_hub(data)
    if data.holdout is not None:
        check(data.holdout < len(splits.train), f"data.holdout={data.holdout}: the {data.train_split} split has only "
                                                f"{len(splits.train)} examples; hold out fewer")
        parts = splits.train.train_test_split(test_size=data.holdout, shuffle=True, seed=HOLDOUT_SEED)
        splits.train, splits.eval = parts["train"], parts["test"]
    if splits.generate is not None and data.generate_limit is not None:
        splits.generate = splits.generate.select(range(min(data.generate_limit, len(splits.generate))))  # the first N
    if data.train_limit is not None and data.train_limit < len(splits.train):
        splits.train = splits.train.shuffle(seed=seed).select(range(data.train_limit))
    if data.eval_limit is not None and data.eval_limit < len(splits.eval):
        splits.eval = splits.eval.shuffle(seed=seed).select(range(data.eval_limit))
    return splits


def _load_hub(data) -> Splits:
    from datasets import load_dataset

    owner, _, rest = data.name.partition("/")
    path, config = (HUB_SHORTCUTS[owner], rest) if owner in HUB_SHORTCUTS and rest else (HUB_IDS.get(data.name, data.name), None)
    config = config or HUB_CONFIGS.get(path)
    try:
        train = load_dataset(path, config, split=data.train_split)
        evaluation = load_dataset(path, config, split=data.eval_split)
        generate = load_dataset(path, config, split=data.generate_split) if data.generate_split else None
    except Exception as err:  # offline, missing dataset or split: all need the same advice
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PeftlabError(f"dataset {data.name}: cannot load from the Hub ({first_line}); offline, point "
                           f"--data-dir or ${DATA_DIR_ENV} at a folder holding {data.name.split('/')[-1]}/") from None
    return Splits(train, evaluation, f"hub:{data.name}", {"fingerprint": train._fingerprint}, generate)


def require_columns(dataset, columns: list[str], split: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    check(not missing, f"{split} split has no column {', '.join(map(repr, missing))} (columns: "
                       f"{', '.join(dataset.column_names)}); set data.text/data.label to the right names")

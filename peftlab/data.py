"""Raw splits from the Hub (online), a local data folder (offline) or the recipe's own files, with file hashes for
the record.

Local layout: <data_dir>/<folder>/<split>.{tsv,csv,jsonl,json,parquet,conll}, where <folder> is the last part of
the dataset name ("glue/sst2" -> "sst2"), or Data(name=...) itself when it is a folder. Or Data(files={split: path}),
relative paths read from the data directory (else the current directory). A file is read by its extension: CSV
(standard quoting), TSV (GLUE's: no quoting), JSON lines, JSON (SQuAD's nested layout is flattened, other JSON read
as records), Parquet through datasets; CoNLL by read_conll (datasets has no CoNLL reader).
Task-specific preprocessing (tokenizing, label alignment, chat rendering) lives with each task in peftlab/tasks/.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PeftlabError, check

DATA_DIR_ENV = "PEFTLAB_DATA_DIR"
SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".conll")
# "glue/<task>" is the usual way to name a GLUE task; on the Hub it is config <task> of nyu-mll/glue.
HUB_SHORTCUTS = {"glue": "nyu-mll/glue"}
# Local folder names whose Hub dataset has another id (the Hub copies also name their splits differently:
# rajpurkar/squad has train/validation, leondz/wnut_17 stores tags as class ids in "ner_tags").
HUB_IDS = {"wnut17": "leondz/wnut_17", "squad_v1.1": "rajpurkar/squad"}
HUB_CONFIGS = {"openai/gsm8k": "main"}  # Hub datasets that need a config name


@dataclass
class Splits:
    """The parts of a run's data (datasets.Dataset each): train, selection (checkpoints are chosen on it), eval
    (the reported split, scored once after training), test (a labelled test split, or None), generate (prompts
    answered by generation: causal_lm's data.generate_split, or None)."""

    train: object
    eval: object
    source: str  # "local:<folder>", "files:<folder relative paths are read from>" or "hub:<id>"
    files: dict = field(default_factory=dict)  # file (file_key) -> md5 (local data only)
    generate: object = None
    selection: object = None
    test: object = None
    ids: dict = field(default_factory=dict)  # part -> its examples' ids (predictions.jsonl)
    sizes: dict = field(default_factory=dict)  # part -> {"split": name, "examples": n, "of": N in the split}


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


def changed_files(data, root: Path | None, recorded: dict, splits=None) -> list[str]:
    """The local files of `splits` (default: every split the recipe reads) whose md5 differs from the one a run
    recorded (environment.json's data files: file_key -> md5), as 'path (md5 …, the run's …)'. Hub data has no
    files to compare: nothing is reported for it."""
    files = local_files(data, root) or {}
    changed = []
    for split in dict.fromkeys(s for s in (files if splits is None else splits) if s in files):
        path = files[split]
        current, used = md5(path), recorded.get(file_key(data, split, path))
        if current != used:
            changed.append(f"{path} (md5 {current[:12]}…, the run's {used[:12] + '…' if used else 'not recorded'})")
    return changed


def file_type(path: str | Path) -> str:
    return Path(path).suffix.lower()


def split_file(folder: Path, split: str) -> Path:
    for suffix in SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    found = sorted(p.name for p in folder.iterdir() if file_type(p) in SUFFIXES)
    raise PeftlabError(f"split '{split}' not found in {folder} (files: {', '.join(found) or 'none'}); "
                       f"set data.train_split/data.eval_split to one of them")


def local_files(data, root: Path | None) -> dict[str, Path] | None:
    """The local file of every split the recipe reads, or None for Hub data. data.files' relative paths are read
    from the data directory when there is one (as dataset folders are), else from the current directory."""
    if not data.files:
        folder = local_folder(data.name, root)
        return None if folder is None else {split: split_file(folder, split) for split in split_names(data)}
    paths = {}
    for split in split_names(data):
        path = Path(data.files[split]).expanduser()
        paths[split] = path if path.is_absolute() or root is None else root / path
        check(paths[split].is_file(), f"data.files[{split!r}]: no file {paths[split]}; fix the path (relative paths "
                                      f"are read from {f'the data directory {root}' if root else 'the current directory'})")
    return paths


def file_key(data, split: str, path: Path) -> str:
    """A data file's name in environment.json: as data.files gives it, else <folder>/<file>."""
    return data.files[split] if data.files else f"{path.parent.name}/{path.name}"


def title(name: str, files: dict | None) -> str:
    """The data as reports name it: the dataset, or its files."""
    return name or ", ".join(dict.fromkeys((files or {}).values()))


def require_utf8(path: Path) -> None:
    """Every reader here decodes UTF-8; another encoding would surface as a UnicodeDecodeError deep inside them."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise PeftlabError(f"{path}:{line}: not UTF-8 text (byte {raw[err.start]:#04x}); save the file as UTF-8, "
                           f"e.g. iconv -f latin1 -t utf-8 {path.name}") from None


def _parquet(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as err:  # pyarrow's errors (ArrowInvalid, OSError) say what is wrong in their first line
        raise PeftlabError(f"{path}: not readable as Parquet ({str(err).strip().splitlines()[0][:120]}); fix the "
                           "file") from None


def _header_columns(path: Path) -> list[str] | None:
    """Column names from the first line (the schema of a Parquet file), without reading the rest."""
    if file_type(path) == ".parquet":
        return _parquet(path).schema_arrow.names
    require_utf8(path)
    with open(path, encoding="utf-8") as fh:
        first = fh.readline().rstrip("\r\n")
    if file_type(path) == ".tsv":
        return first.split("\t")
    if file_type(path) == ".csv":
        return next(csv.reader([first]), [])  # a header may quote its names
    if file_type(path) == ".jsonl":
        import json

        try:
            return list(json.loads(first))
        except ValueError:
            raise PeftlabError(f"{path}:1: not a JSON object per line; fix the file") from None
    return None  # .json / .conll: structure checked when read


def has_rows(path: Path) -> bool:
    """A line after the header (CSV/TSV), a first line (JSON lines, JSON, CoNLL) that is not blank, a row
    (Parquet)."""
    if file_type(path) == ".parquet":
        return _parquet(path).metadata.num_rows > 0
    with open(path, encoding="utf-8") as fh:
        lines = (line for line in fh if line.strip())
        first = next(lines, None)
        return first is not None and (file_type(path) not in (".tsv", ".csv") or next(lines, None) is not None)


COLUMNS_FIX = "set data.text/data.label (data.columns for a data.chat_format) to the right names"


def preflight(data, root: Path | None, columns: list[str]) -> None:
    """Cheap checks before a run directory exists: folder, split files and columns of local data."""
    paths = local_files(data, root)
    for path in dict.fromkeys((paths or {}).values()):  # Hub data is checked when loaded
        found = _header_columns(path)
        check(found is None or has_rows(path), f"{path}: the split is empty (a header and no examples); "
                                                "supply a file with at least one example")
        missing = [c for c in columns if found is not None and c not in found]
        check(not missing, f"{path.name}: no column {', '.join(map(repr, missing))} (columns: {', '.join(found or [])}); "
                           + COLUMNS_FIX)


def read_conll(path: Path):
    """CoNLL: a word per line, its tag in the last column (`token<TAB>tag` as WNUT-17, or CoNLL-2003's
    space-separated `token POS chunk tag`), a blank line between sentences; `-DOCSTART-` lines are skipped.
    Columns are split at tabs when the line has one (a token may then hold spaces), else at whitespace."""
    from datasets import Dataset

    tokens, tags, sentences = [], [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                sentences.append({"tokens": tokens, "tags": tags})
            tokens, tags = [], []
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        check(len(parts) >= 2, f"{path}:{lineno}: expected 'token<TAB>tag' (or columns with the tag last), got {line!r}")
        tokens.append(parts[0])
        tags.append(parts[-1])
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


# How datasets reads each file type: its builder, options, and what the file is called in an error.
# TSV: GLUE's files carry raw quote characters, so no quoting (3: QUOTE_NONE); CSV: standard quoting, as pandas, the
# csv module and spreadsheets write it (a text with a comma is quoted). na_filter off keeps "null"/"NA" as text.
READERS = {".tsv": ("csv", {"delimiter": "\t", "quoting": 3, "keep_default_na": False, "na_filter": False}, "TSV"),
           ".csv": ("csv", {"keep_default_na": False, "na_filter": False}, "CSV"),
           ".jsonl": ("json", {}, "JSON or JSON lines"), ".json": ("json", {}, "JSON or JSON lines"),
           ".parquet": ("parquet", {}, "Parquet")}


def read_file(path: Path):
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    kind = file_type(path)
    if kind == ".parquet":
        _parquet(path)  # a damaged file in one line, not datasets' deeper error
    else:
        require_utf8(path)
    if kind == ".conll":
        return read_conll(path)
    if kind == ".json" and (squad := read_squad(path)) is not None:
        return squad
    builder, options, what = READERS[kind]
    try:
        dataset = load_dataset(builder, data_files=str(path), split="train", **options)
    except (DatasetGenerationError, StopIteration) as err:  # malformed (the cause says where), or an empty file
        cause = err.__cause__ or err
        detail = str(cause).strip().splitlines()[0][:120] if str(cause).strip() else "an empty file"
        raise PeftlabError(f"{path}: not readable as {what} ({detail}); fix the file") from None
    check(len(dataset) > 0, f"{path}: the split is empty; supply a file with at least one example")
    return dataset


SELECTION_CAP = 1000  # a fractional data.selection holds out at most this many examples: enough to rank checkpoints
PARTS = {"eval": "eval_split", "test": "test_split", "generation": "generate_split"}  # part -> Data field naming it


def split_names(data) -> list[str]:
    """The splits a recipe reads, each once."""
    return list(dict.fromkeys(s for s in (data.train_split, data.eval_split, data.test_split, data.generate_split) if s))


def selection_size(selection: float, n_train: int) -> int:
    return int(selection) if selection >= 1 else min(SELECTION_CAP, max(1, round(selection * n_train)))


def load_splits(data, root: Path | None) -> Splits:
    """The run's parts, drawn with data.seed only: every training seed selects, trains and is scored on the same
    examples. The selection examples are held out of the train split first, then train_limit draws from the rest;
    eval_limit (eval and test splits) and generate_limit draw subsets of theirs. Subsets keep the split's order
    and are nested: a larger limit adds examples (one permutation per split)."""
    paths = local_files(data, root)
    if paths is not None:
        read = {split: read_file(path) for split, path in paths.items()}
        files = {file_key(data, split, path): md5(path) for split, path in paths.items()}
        source = f"files:{root or Path.cwd()}" if data.files else f"local:{paths[data.train_split].parent}"
    else:
        read, source, files = _load_hub(data)
    full_train = read[data.train_split]
    n_selection = selection_size(data.selection, len(full_train))
    check(n_selection < len(full_train), f"data.selection={data.selection}: the {data.train_split} split has only "
                                         f"{len(full_train)} examples; hold out fewer for checkpoint selection")
    order = _permutation(len(full_train), data.seed)
    rows = {"selection": order[:n_selection], "train": order[n_selection:][:data.train_limit]}
    for part, field_name in PARTS.items():
        split = getattr(data, field_name)
        if split:
            limit = data.generate_limit if part == "generation" else data.eval_limit
            rows[part] = _permutation(len(read[split]), data.seed)[:limit]
    splits = Splits(None, None, source, files)
    for part, picked in rows.items():
        split = data.train_split if part in ("train", "selection") else getattr(data, PARTS[part])
        whole, picked = read[split], sorted(int(i) for i in picked)
        subset = whole.select(picked)
        setattr(splits, "generate" if part == "generation" else part, subset)
        # ids: the dataset's own where they name one example each (SQuAD question ids), else row numbers in the split
        # (STS-B's "id" column repeats across its source files)
        own = whole["id"] if "id" in whole.column_names else None
        splits.ids[part] = subset["id"] if own is not None and len(set(own)) == len(own) else picked
        splits.sizes[part] = {"split": split, "examples": len(picked), "of": len(whole)}
    return splits


def _permutation(n: int, seed: int):
    import numpy as np

    return np.random.default_rng(seed).permutation(n)


def _load_hub(data) -> tuple[dict, str, dict]:
    from datasets import load_dataset

    owner, _, rest = data.name.partition("/")
    path, config = (HUB_SHORTCUTS[owner], rest) if owner in HUB_SHORTCUTS and rest else (HUB_IDS.get(data.name, data.name), None)
    config = config or HUB_CONFIGS.get(path)
    try:
        read = {split: load_dataset(path, config, split=split) for split in split_names(data)}
    except Exception as err:  # offline, missing dataset or split: all need the same advice
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PeftlabError(f"dataset {data.name}: cannot load from the Hub ({first_line}); offline, point "
                           f"--data-dir or ${DATA_DIR_ENV} at a folder holding {data.name.split('/')[-1]}/") from None
    return read, f"hub:{data.name}", {"fingerprint": read[data.train_split]._fingerprint}


def require_columns(dataset, columns: list[str], split: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    check(not missing, f"{split} split has no column {', '.join(map(repr, missing))} (columns: "
                       f"{', '.join(dataset.column_names)}); " + COLUMNS_FIX)

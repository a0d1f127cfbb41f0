"""Your own data files (Data(files={split: path})): every file type reads the same examples as the dataset folder,
the recipe maps the file's column names, relative paths resolve against the data directory, the files' md5s are
recorded, and each mistake stops with one line that names the fix."""

from __future__ import annotations

import csv
import json
import runpy
from pathlib import Path

import pytest

from peftlab import Data, load_recipe, resume, rundir
from peftlab import data as data_stage
from peftlab.errors import PeftlabError
from peftlab.recipe import recipe_from_dict, recipe_to_dict
from peftlab.tasks import get_task

from conftest import run_recipe, sentiment_rows, write_recipe, write_tsv

# a quoted word and commas (CSV quotes the text), texts pandas would read as missing values
TRICKY = [('a "great" film , really', 1), ("null", 0), ("NA , dull", 0)]
LABELS = ["negative", "positive"]
REPO = Path(__file__).resolve().parents[1]


def write_rows(path: Path, rows, header=("review", "sentiment")) -> Path:
    """(text, label) rows in the file type the suffix names: what a user's own tools write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [dict(zip(header, row)) for row in rows]
    if path.suffix == ".tsv":
        write_tsv(path, rows, header)  # GLUE's layout: no quoting
    elif path.suffix == ".csv":
        with open(path, "w", encoding="utf-8", newline="") as fh:  # the csv module's standard quoting
            writer = csv.DictWriter(fh, header)
            writer.writeheader()
            writer.writerows(records)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif path.suffix == ".json":
        path.write_text(json.dumps(records))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def files_data(suffix: str, folder: str = "mine", **kwargs) -> Data:
    return Data(files={"train": f"{folder}/train{suffix}", "validation": f"{folder}/validation{suffix}"},
                **{"text": "review", "label": "sentiment"} | kwargs)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_every_file_type_reads_the_same_examples_as_the_folder(tmp_path, suffix):
    train, validation = sentiment_rows(40, seed=1) + TRICKY, sentiment_rows(12, seed=2)
    write_tsv(tmp_path / "sst2" / "train.tsv", train)  # the dataset-folder form: sst2/{train,validation}.tsv
    write_tsv(tmp_path / "sst2" / "validation.tsv", validation)
    paths = [write_rows(tmp_path / "mine" / f"{split}{suffix}", rows)
             for split, rows in (("train", train), ("validation", validation))]
    subsets = {"selection": 0.2, "train_limit": 30, "eval_limit": 10}
    folder = data_stage.load_splits(Data("sst2", text="sentence", **subsets), tmp_path)
    files = data_stage.load_splits(files_data(suffix, **subsets), tmp_path)
    for part in ("train", "selection", "eval"):
        expected, got = getattr(folder, part), getattr(files, part)
        assert list(zip(got["review"], got["sentiment"])) == list(zip(expected["sentence"], expected["label"])), part
    assert files.ids == folder.ids and files.sizes == folder.sizes
    read = list(files.train["review"]) + list(files.selection["review"])
    assert all(text in read for text, _ in TRICKY)  # quotes, commas and "null" came back as written
    assert files.files == {f"mine/{p.name}": data_stage.md5(p) for p in paths}  # keyed as the recipe names them
    assert files.source == f"files:{tmp_path}"


def test_conll_and_squad_files_go_through_their_readers(tmp_path):
    (tmp_path / "ner").mkdir()
    (tmp_path / "ner" / "train.conll").write_text("the\tO\nnew york\tB-location\n\ngood\tO\n")
    # CoNLL-2003's layout: space-separated columns with the tag last, -DOCSTART- between documents
    (tmp_path / "ner" / "dev.conll").write_text("-DOCSTART- -X- -X- O\n\nthe DT B-NP O\nfilm NN I-NP B-work\n\n"
                                                 "-DOCSTART- -X- -X- O\n\ngood JJ B-ADJP O\n")
    squad = {"data": [{"title": "t", "paragraphs": [{"context": "a great film", "qas": [
        {"id": "q1", "question": "what film", "answers": [{"text": "great", "answer_start": 2}]},
        {"id": "q2", "question": "which", "answers": [{"text": "film", "answer_start": 8}]}]}]}]}
    (tmp_path / "qa").mkdir()
    (tmp_path / "qa" / "train.json").write_text(json.dumps(squad))
    (tmp_path / "qa" / "dev.json").write_text(json.dumps(squad))

    ner = data_stage.load_splits(Data(files={"train": "ner/train.conll", "validation": "ner/dev.conll"},
                                      text="tokens", label="tags", selection=1), tmp_path)
    assert ner.eval[:] == {"tokens": [["the", "film"], ["good"]], "tags": [["O", "B-work"], ["O"]]}
    assert sorted(list(ner.train["tokens"]) + list(ner.selection["tokens"])) == [["good"], ["the", "new york"]]
    qa = data_stage.load_splits(Data(files={"train": "qa/train.json", "validation": "qa/dev.json"}, text="question",
                                     text_pair="context", label="answers", selection=1), tmp_path)
    assert list(qa.eval["id"]) == ["q1", "q2"] and list(qa.ids["eval"]) == ["q1", "q2"]  # SQuAD's ids, flattened per question
    assert qa.eval[1]["answers"] == {"text": ["film"], "answer_start": [8]}


def test_relative_paths_resolve_against_the_data_directory_else_the_current_one(tmp_path, monkeypatch):
    for folder in ("root/mine", "cwd/mine"):
        for split in ("train", "validation"):
            write_rows(tmp_path / folder / f"{split}.csv", sentiment_rows(4, seed=0))
    data = files_data(".csv")
    assert data_stage.local_files(data, tmp_path / "root")["train"] == tmp_path / "root" / "mine" / "train.csv"
    monkeypatch.chdir(tmp_path / "cwd")
    assert data_stage.local_files(data, None)["train"].resolve() == tmp_path / "cwd" / "mine" / "train.csv"
    absolute = Data(files={"train": str(tmp_path / "cwd" / "mine" / "train.csv"), "validation": "mine/validation.csv"})
    assert data_stage.local_files(absolute, tmp_path / "root") == {
        "train": tmp_path / "cwd" / "mine" / "train.csv", "validation": tmp_path / "root" / "mine" / "validation.csv"}


def _broken(tmp_path: Path, name: str, content: bytes | None = None) -> Path:
    for split in ("train", "validation"):
        write_rows(tmp_path / "mine" / f"{split}{Path(name).suffix}", sentiment_rows(4, seed=0))
    if content is not None:
        (tmp_path / "mine" / name).write_bytes(content)
    return tmp_path


def _empty_parquet(tmp_path: Path) -> Path:
    root = _broken(tmp_path, "train.parquet")
    write_rows(root / "mine" / "train.parquet", [])
    return root


@pytest.mark.parametrize("data, make, message", [
    (files_data(".csv", name="sst2"), None, r"give data.name \(a Hub dataset or a folder\) or data.files"),
    (Data(), None, r"give data.name \(a Hub dataset or a folder\) or data.files"),
    (Data(files={"train": "mine/train.xlsx", "validation": "mine/validation.csv"}), None,
     r"data.files\['train'\]='mine/train.xlsx': unknown file type; use one of .csv, .tsv, .jsonl"),
    (Data(files={"train": "mine/train.csv"}), None,
     "data.files has no split 'validation' .files: train.; add its file to data.files or set data.train_split"),
    (Data(files={"train": "mine/train.csv", "dev": "mine/dev.csv"}, test_split="test", eval_split="dev"), None,
     "data.files has no split 'test'"),
    (files_data(".csv"), lambda tmp: tmp, r"data.files\['train'\]: no file .*mine/train.csv; fix the path "
                                          r"\(relative paths are read from the data directory"),
    (files_data(".csv", text="sentence"), lambda tmp: _broken(tmp, "train.csv"),
     r"train.csv: no column 'sentence' \(columns: review, sentiment\); set data.text/data.label"),
    (files_data(".jsonl", label="stars"), lambda tmp: _broken(tmp, "train.jsonl"),
     r"train.jsonl: no column 'stars' \(columns: review, sentiment\)"),
    (files_data(".parquet", label="stars"), lambda tmp: _broken(tmp, "train.parquet"),
     r"train.parquet: no column 'stars' \(columns: review, sentiment\)"),
    (files_data(".parquet"), lambda tmp: _broken(tmp, "train.parquet", b"PAR1 not parquet"),
     r"train.parquet: not readable as Parquet \(.*\); fix the file"),
    (files_data(".parquet"), _empty_parquet, "the split is empty"),
    (files_data(".csv"), lambda tmp: _broken(tmp, "train.csv", b'review,sentiment\n"a good film,positive\n'),
     r"train.csv: not readable as CSV \(.*EOF inside string.*\); fix the file"),
])
def test_bad_files_fail_in_one_line(tmp_path, data, make, message):
    with pytest.raises(PeftlabError, match=message) as info:
        data.check("data")
        root = make(tmp_path)
        data_stage.preflight(data, root, [data.text, data.label])
        data_stage.load_splits(data, root)
    assert "\n" not in str(info.value)


def test_files_in_recipes_overrides_and_records(tmp_path, tiny_bert):
    path = write_recipe(tmp_path / "r.py", tiny_bert)
    path.write_text(path.read_text().replace(
        '"glue/sst2", text="sentence"', 'files={"train": "a/train.csv", "validation": "a/validation.csv"}, text="review"'))
    recipe = load_recipe(path, ["data.files.validation=b/dev.parquet"])
    assert recipe.data.files == {"train": "a/train.csv", "validation": "b/dev.parquet"} and recipe.data.name == ""
    assert recipe_from_dict(recipe_to_dict(recipe)) == recipe
    with pytest.raises(PeftlabError, match=r"--set data.files: set one entry of it, e.g. data.files.<key>=\.\.\."):
        load_recipe(path, ["data.files=x.csv"])
    with pytest.raises(PeftlabError, match="unknown file type"):
        load_recipe(path, ["data.files.validation=b/dev.xlsx"])
    with pytest.raises(PeftlabError, match="data.columns maps the columns of a data.chat_format"):
        load_recipe(path, ["data.columns.output=answer"])


def test_resume_notices_a_changed_file(tmp_path, tiny_bert):
    root = tmp_path / "data"
    for split in ("train", "validation"):
        write_rows(root / "mine" / f"{split}.parquet", sentiment_rows(8, seed=len(split)))
    recipe = load_recipe(write_recipe(tmp_path / "r.py", tiny_bert))
    from dataclasses import replace

    recipe = replace(recipe, data=files_data(".parquet"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    splits = data_stage.load_splits(recipe.data, root)
    rundir.write_json(run_dir / "environment.json", {"data": {"files": splits.files}, "model": {"fingerprint": None}})
    assert resume.input_differences(run_dir, recipe, root) == []
    write_rows(root / "mine" / "train.parquet", sentiment_rows(8, seed=99))
    changed = resume.input_differences(run_dir, recipe, root)
    assert len(changed) == 1 and changed[0].startswith(f"data file {root / 'mine' / 'train.parquet'} (md5 ")


def test_a_csv_recipe_trains_exactly_as_the_folder_recipe(tmp_path, tiny_bert, data_dir):
    """The same sentences from the dataset folder (TSV, labels 0/1) and from CSV files of the user's own (other
    column names, label names): the same run, to the last digit, with the CSV files' md5s recorded."""
    root = tmp_path / "data"
    for split in ("train", "validation"):
        rows = data_stage.read_file(data_dir / "sst2" / f"{split}.tsv")
        write_tsv(root / "sst2" / f"{split}.tsv", zip(rows["sentence"], rows["label"]))
        write_rows(root / "mine" / f"{split}.csv", [(t, LABELS[y]) for t, y in zip(rows["sentence"], rows["label"])])
    folder_recipe = write_recipe(tmp_path / "folder.py", tiny_bert, name="folder")
    files_recipe = write_recipe(tmp_path / "files.py", tiny_bert, name="files")
    files_recipe.write_text(files_recipe.read_text().replace(
        'Data("glue/sst2", text="sentence", label="label"',
        'Data(files={"train": "mine/train.csv", "validation": "mine/validation.csv"}, text="review", label="sentiment"'))
    runs = [run_recipe(tmp_path / name, recipe, root) for name, recipe in (("a", folder_recipe), ("b", files_recipe))]
    folder_metrics, files_metrics = (json.loads((run / "metrics.json").read_text()) for run in runs)
    assert files_metrics["task_metrics"] == folder_metrics["task_metrics"]
    assert files_metrics["protocol"] == folder_metrics["protocol"]
    assert (runs[1] / "predictions.jsonl").read_text() == (runs[0] / "predictions.jsonl").read_text()
    env = json.loads((runs[1] / "environment.json").read_text())
    assert env["data"]["files"] == {f"mine/{s}.csv": data_stage.md5(root / "mine" / f"{s}.csv")
                                    for s in ("train", "validation")}
    assert "on mine/train.csv, mine/validation.csv with" in (runs[1] / "report.md").read_text()


def test_the_example_recipes_read_what_the_script_builds(tmp_path):
    """scripts/make_format_examples.py on a small copy of the shared data: the six example recipes find their files,
    the three SST-2 copies hold the same examples, and the ShareGPT and messages files the same conversations."""
    from peftlab.chat import messages

    source = tmp_path / "source"
    write_tsv(source / "sst2" / "train.tsv", sentiment_rows(60, seed=1) + TRICKY)
    write_tsv(source / "sst2" / "validation.tsv", sentiment_rows(10, seed=2))
    for split, n in (("train", 60), ("test", 20)):
        (source / "gsm8k").mkdir(exist_ok=True)
        (source / "gsm8k" / f"{split}.jsonl").write_text("".join(
            json.dumps({"question": f"What is {i} plus {i}?", "answer": f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n"
                                                                        f"#### {2 * i}"}) + "\n" for i in range(n)))
    script = runpy.run_path(str(REPO / "scripts" / "make_format_examples.py"))
    assert script["main"](["--source", str(source), "--out", str(tmp_path / "data" / "formats")]) == 0
    names = [f"lora_sst2_{kind}" for kind in ("csv", "jsonl", "parquet")] + [
        f"lora_gsm8k_{kind}" for kind in ("alpaca", "sharegpt", "messages")]
    recipes = {name: load_recipe(REPO / "recipes" / f"{name}.py") for name in names}
    splits = {}
    for name, recipe in recipes.items():
        data_stage.preflight(recipe.data, tmp_path / "data", get_task(recipe.model.task).columns(recipe))
        splits[name] = data_stage.load_splits(recipe.data, tmp_path / "data")
    for part in ("train", "selection", "eval"):
        csv_rows, jsonl_rows, parquet_rows = (getattr(splits[f"lora_sst2_{kind}"], part)[:]
                                              for kind in ("csv", "jsonl", "parquet"))
        assert csv_rows == jsonl_rows == parquet_rows and set(csv_rows["sentiment"]) <= set(LABELS)
        sharegpt, chats = (getattr(splits[f"lora_gsm8k_{kind}"], part) for kind in ("sharegpt", "messages"))
        read = [[messages(row, recipes[f"lora_gsm8k_{kind}"].data, "row") for row in rows]
                for kind, rows in (("sharegpt", sharegpt), ("messages", chats))]
        assert read[0] == read[1]
    conversations = [messages(row, recipes["lora_gsm8k_messages"].data, "row") for row in splits["lora_gsm8k_messages"].train]
    assert any(sum(turn["role"] == "assistant" for turn in turns) == 2 for turns in conversations)  # follow-ups
    alpaca = splits["lora_gsm8k_alpaca"].train[0]
    assert alpaca["input"] == "" and alpaca["output"].endswith(f"#### {2 * int(alpaca['instruction'].split()[2])}")


def test_example_ids_are_the_datasets_own_only_where_they_are_unique(tmp_path):
    """SQuAD-style unique ids are kept; STS-B's "id" column repeats across its source files, so row numbers serve
    (predictions.jsonl keys each example once)."""
    header = "id\tsentence\tlabel\n"
    repeated = "".join(f"{i % 5}\tsentence number {i}\t{i % 2}\n" for i in range(40))
    unique = "".join(f"q{i}\tsentence number {i}\t{i % 2}\n" for i in range(40))
    for name, body in (("repeated", repeated), ("unique", unique)):
        for split in ("train", "validation"):
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / f"{split}.tsv").write_text(header + body)
    data = {"text": "sentence", "selection": 0.2, "eval_limit": 10}
    repeated_ids = data_stage.load_splits(Data("repeated", **data), tmp_path).ids["eval"]
    unique_ids = data_stage.load_splits(Data("unique", **data), tmp_path).ids["eval"]
    assert len(set(repeated_ids)) == 10 and all(isinstance(i, int) for i in repeated_ids)
    assert len(set(unique_ids)) == 10 and all(str(i).startswith("q") for i in unique_ids)

"""Batch prediction from files (predict --input/--output) on tiny runs: the records one-by-one predict prints, in input
order, for classification (CSV), question answering and token classification (JSON lines) and a causal LM; and
--eval on data that differ from the run's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from peftlab import predict

from conftest import run_recipe, sentiment_rows, write_recipe
from test_causal_lm import make_llama, sums
from test_causal_lm import write_jsonl as write_causal_jsonl
from test_causal_lm import write_recipe as causal_recipe
from test_tasks import ner_sentences, squad_examples, task_recipe, write_conll, write_squad

SMALL_BATCHES = "max_steps=2, lr=1e-2, batch_size=16, eval_batch_size=4"  # evaluation batches of 4: several per file


def one_by_one(run_dir: Path, capsys, texts: list[str], *options: str) -> list[dict]:
    rows = []
    for text in texts:
        capsys.readouterr()
        assert predict.main([str(run_dir), text, *options]) == 0
        rows.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    return rows


def from_file(run_dir: Path, source: Path, capsys, *options: str) -> list[dict]:
    out = source.with_name("predictions.jsonl")
    capsys.readouterr()
    assert predict.main([str(run_dir), "--input", str(source), "--output", str(out), *options]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and f"wrote {len(out.read_text().splitlines())} predictions" in captured.err
    return [json.loads(line) for line in out.read_text().splitlines()]


def assert_same(batched: list[dict], single: list[dict], close: tuple[str, ...] = ()) -> None:
    """Equal records; `close` fields are floats that batching (padding) may move in the last digits."""
    assert len(batched) == len(single)
    for b, s in zip(batched, single):
        assert {k: v for k, v in b.items() if k not in close} == {k: v for k, v in s.items() if k not in close}
        for key in close:
            assert b[key] == pytest.approx(s[key], abs=1e-5)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, tiny_bert, data_dir) -> Path:
    tmp = tmp_path_factory.mktemp("predict-cls")
    return run_recipe(tmp, write_recipe(tmp / "r.py", tiny_bert, train=SMALL_BATCHES), data_dir)


def test_classification_csv_gives_one_by_one_predictions_in_input_order(classifier, tmp_path, capsys):
    texts = [text for text, _ in sentiment_rows(11, seed=5)]
    source = tmp_path / "reviews.csv"
    source.write_text("id,sentence,stars\n" + "".join(f"r{i},{t},3\n" for i, t in enumerate(texts)))
    batched = from_file(classifier, source, capsys)
    assert [row["text"] for row in batched] == texts  # input order, though batches go by length
    assert_same(batched, one_by_one(classifier, capsys, texts), close=("probability",))


def test_eval_says_when_the_data_differ_from_the_runs(classifier, data_dir, tmp_path, capsys):
    capsys.readouterr()
    assert predict.main([str(classifier), "--eval", "--data-dir", str(data_dir)]) == 0
    same = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert same["data_matches_run"] is True
    other = tmp_path / "data"
    shutil.copytree(data_dir, other)
    validation = other / "sst2" / "validation.tsv"
    lines = validation.read_text().splitlines(keepends=True)
    validation.write_text("".join(lines[:-8]))  # a shorter validation split: other data under the same name
    assert predict.main([str(classifier), "--eval", "--data-dir", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "validation.tsv" in err and "--allow-other-data" in err
    assert predict.main([str(classifier), "--eval", "--data-dir", str(other), "--allow-other-data"]) == 0
    captured = capsys.readouterr()
    scored = json.loads(captured.out.strip().splitlines()[-1])
    assert scored["data_matches_run"] is False and "warning: scoring data that differ" in captured.err
    assert "validation.tsv" in captured.err and scored["eval"] != same["eval"]  # the other data, scored on request


@pytest.mark.slow
def test_question_answering_jsonl_gives_one_by_one_predictions(tmp_path, tiny_bert, capsys):
    data = tmp_path / "data"
    write_squad(data / "squad_v1.1" / "validation.json", squad_examples(60, seed=1))
    write_squad(data / "squad_v1.1" / "test.json", squad_examples(8, seed=2))
    run_dir = run_recipe(tmp_path, task_recipe(tmp_path / "r.py", tiny_bert, "qa", train=SMALL_BATCHES), data)
    examples = squad_examples(9, seed=3)  # contexts of 7 to 31 words: some need a second window
    source = tmp_path / "questions.jsonl"
    source.write_text("".join(json.dumps({"question": e["question"], "context": e["context"]}) + "\n"
                              for e in examples))
    batched = from_file(run_dir, source, capsys)
    single = [one_by_one(run_dir, capsys, [e["question"]], "--context", e["context"])[0] for e in examples]
    assert_same(batched, single, close=("score",))
    # --context gives one passage to every question of a file without a context column
    source.write_text("".join(json.dumps({"question": q}) + "\n" for q in ("really good", "very good film")))
    context = examples[0]["context"]
    assert_same(from_file(run_dir, source, capsys, "--context", context),
                one_by_one(run_dir, capsys, ["really good", "very good film"], "--context", context), close=("score",))


@pytest.mark.slow
def test_token_classification_jsonl_reads_word_lists(tmp_path, tiny_bert, capsys):
    data = tmp_path / "data"
    write_conll(data / "wnut17" / "train.conll", ner_sentences(60, seed=1))
    write_conll(data / "wnut17" / "validation.conll", ner_sentences(8, seed=2))
    run_dir = run_recipe(tmp_path, task_recipe(tmp_path / "r.py", tiny_bert, "token_classification",
                                               train=SMALL_BATCHES), data)
    sentences = [[word for word, _ in s] for s in ner_sentences(7, seed=3)]
    source = tmp_path / "sentences.jsonl"
    source.write_text("".join(json.dumps({"tokens": words}) + "\n" for words in sentences))  # as the CoNLL rows
    assert_same(from_file(run_dir, source, capsys), one_by_one(run_dir, capsys, [" ".join(w) for w in sentences]))


@pytest.mark.slow
def test_causal_lm_jsonl_gives_one_by_one_generations(tmp_path, capsys):
    data = tmp_path / "data"
    write_causal_jsonl(data / "sums" / "train.jsonl", sums(40, seed=1))
    write_causal_jsonl(data / "sums" / "test.jsonl", sums(8, seed=2))
    recipe = causal_recipe(tmp_path / "r.py", make_llama(tmp_path / "llama"),
                           train="max_steps=2, lr=1e-2, batch_size=8, eval_batch_size=3")
    run_dir = run_recipe(tmp_path, recipe, data)
    prompts = [row["question"] for row in sums(7, seed=3)] + ["what is 12 plus 7 and 3"]  # lengths differ: padding
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"question": p}) + "\n" for p in prompts))
    batched = from_file(run_dir, source, capsys, "--max-new-tokens", "6")
    assert len({row["generation"] for row in batched}) > 1  # real generations, not one constant
    assert_same(batched, one_by_one(run_dir, capsys, prompts, "--max-new-tokens", "6"))

"""Regression (STS-B), token classification (WNUT-17 style NER) and extractive QA (SQuAD) on tiny models:
metrics against hand-computed cases, word-piece label alignment, QA windows and span decoding, bad-data errors,
every method through a forward+backward on each task, and one run + reload + predict per task."""

from __future__ import annotations

import json
import random
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from peftlab import Data, LoRA, Model, Recipe, artifacts, load_recipe, models, predict
from peftlab import run as run_cli
from peftlab.errors import PeftlabError
from peftlab.metrics import (
    answer_f1,
    classification_scores,
    correlation,
    entity_scores,
    entity_spans,
    normalize_answer,
    squad_scores,
)
from peftlab.tasks import get_task, metrics_for, qa, token_classification

from conftest import FILLER, NEGATIVE, POSITIVE, make_bert, make_tokenizer, run_recipe

QA_DATA = "max_length=32, stride=8, max_answer_length=4, n_best=5"


# ------------------------------------------------------------------------------------------ tiny data files

def stsb_rows(n: int, seed: int) -> list[tuple]:
    """STS-B layout; the score grows with the number of positive words in the pair (0, 2.5 or 5)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pos = [rng.random() < 0.5, rng.random() < 0.5]
        s1, s2 = (" ".join(rng.choices(FILLER, k=3) + [rng.choice(POSITIVE if p else NEGATIVE)]) for p in pos)
        rows.append(("main-captions", "MSRvid", "2012test", f"{i:04d}", f"{2.5 * sum(pos):.3f}", s1, s2, "", ""))
    return rows


def write_stsb(path: Path, rows) -> None:
    header = "genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2\tsource1\tsource2\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "".join("\t".join(r) + "\n" for r in rows))


def ner_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    """Positive word (+ "film") is a `pos` entity, a negative word a `neg` one, everything else O."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        words = [(w, "O") for w in rng.choices(["the", "a", "was", "very", "and", "really"], k=rng.randint(2, 5))]
        at = rng.randint(0, len(words))
        entity = [(rng.choice(POSITIVE), "B-pos"), ("film", "I-pos")] if rng.random() < 0.5 else [(rng.choice(NEGATIVE), "B-neg")]
        sentences.append(words[:at] + entity + words[at:])
    return sentences


def write_conll(path: Path, sentences) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("".join(f"{w}\t{t}\n" for w, t in s) for s in sentences))


def squad_examples(n: int, seed: int) -> list[dict]:
    """Contexts of filler words with one positive word (the answer), sometimes far enough to need a second window."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        words = rng.choices(["the", "film", "plot", "was", "very", "and", "story"], k=rng.randint(6, 30))
        at = rng.randint(0, len(words))
        words.insert(at, rng.choice(POSITIVE))
        context = " ".join(words)
        start = len(" ".join(words[:at])) + (1 if at else 0)
        answers = [{"text": words[at], "answer_start": start}]
        if at + 1 < len(words):  # a second reference answer, one word longer
            answers.append({"text": f"{words[at]} {words[at + 1]}", "answer_start": start})
        examples.append({"id": f"q{i}", "question": "really good", "context": context, "answers": answers})
    return examples


def write_squad(path: Path, examples: list[dict]) -> None:
    paragraphs = [{"context": e["context"], "qas": [{"id": e["id"], "question": e["question"],
                                                       "answers": e["answers"]}]} for e in examples]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": [{"title": "Tiny", "paragraphs": paragraphs}], "version": "1.1"}))


@pytest.fixture(scope="module")
def task_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("task-data")
    # 178 and 133 examples: 10 % are held out for checkpoint selection (Data.selection), 160 and 120 train
    write_stsb(root / "stsb" / "train.tsv", stsb_rows(178, seed=1))
    write_stsb(root / "stsb" / "validation.tsv", stsb_rows(48, seed=2))
    write_conll(root / "wnut17" / "train.conll", ner_sentences(178, seed=1))
    write_conll(root / "wnut17" / "validation.conll", ner_sentences(48, seed=2))
    write_squad(root / "squad_v1.1" / "validation.json", squad_examples(133, seed=1))  # train, as in the recipes
    write_squad(root / "squad_v1.1" / "test.json", squad_examples(40, seed=2))
    return root


# recipe parts per task, the way recipes/*_base.py set them up for the real data
TASKS = {
    "regression": 'Data("glue/stsb", text="sentence1", text_pair="sentence2", label="score", max_length=32)',
    "token_classification": 'Data("wnut17", text="tokens", label="tags", max_length=32)',
    "qa": f'Data("squad_v1.1", text="question", text_pair="context", label="answers", {QA_DATA}, '
          'train_split="validation", eval_split="test")',
}


def task_recipe(path: Path, model_dir: Path, task: str, method: str = "LoRA(r=8, alpha=16, target='all-linear')",
                train: str = "epochs=4, lr=1e-2, batch_size=16, logging_steps=5", data: str | None = None,
                extra: str = "", name: str | None = None) -> Path:
    path.write_text(textwrap.dedent(f"""\
        from peftlab import *
        recipe = Recipe(
            name={name or task!r},
            model=Model({str(model_dir)!r}, task={task!r}),
            data={data or TASKS[task]},
            method={method},
            train=Train({train}),
            {extra}
        )
        """))
    return path


# ---------------------------------------------------------------------------------------------------- metrics

def test_correlation_by_hand():
    # x = 1..4, y = 1, 2, 3, 10: Spearman 1 (same order); Pearson 14 / sqrt(5 * 50) (centred sums by hand)
    scores = correlation([1, 2, 3, 4], [1, 2, 3, 10])
    assert scores["spearman"] == pytest.approx(1.0)
    assert scores["pearson"] == pytest.approx(14 / (5 * 50) ** 0.5)
    # x = 1..5, y = 2, 1, 4, 3, 5: both 8 / 10
    scores = correlation([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert scores == pytest.approx({"pearson": 0.8, "spearman": 0.8})
    # constant predictions carry no correlation: 0, not nan
    assert correlation([3, 3, 3], [1, 2, 3]) == {"pearson": 0.0, "spearman": 0.0}


def test_classification_scores_match_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    for classes in (2, 3, 5):  # with 5 classes over 40 examples some class is never predicted
        gold, pred = rng.integers(0, classes, 40), rng.integers(0, classes - 1, 40)
        assert classification_scores(pred, gold) == pytest.approx(
            {"accuracy": accuracy_score(gold, pred), "macro_f1": f1_score(gold, pred, average="macro", zero_division=0)})


def test_entity_spans_read_bio_like_seqeval():
    assert entity_spans(["B-per", "I-per", "O", "B-loc", "B-loc", "I-loc"]) == [("per", 0, 2), ("loc", 3, 4),
                                                                               ("loc", 4, 6)]
    # I- after O or after another type starts an entity (seqeval's default, non-strict mode)
    assert entity_spans(["I-per", "I-per", "I-loc", "O", "I-org"]) == [("per", 0, 2), ("loc", 2, 3), ("org", 4, 5)]
    assert entity_spans(["B-creative-work", "I-creative-work"]) == [("creative-work", 0, 2)]
    assert entity_spans(["O", "O"]) == []


def test_entity_scores_by_hand():
    gold = [["B-per", "I-per", "O", "B-loc", "O", "B-org", "I-org"], ["B-loc", "I-loc"]]
    pred = [["B-per", "I-per", "O", "B-org", "O", "B-org", "O"],  # loc read as org (type error), org cut short
            ["I-loc", "I-loc"]]  # starts with I-: still the same span as B-loc I-loc
    s = entity_scores(pred, gold)
    # gold: per, loc, org, loc; predicted: per, org(3-4), org(5-6), loc; hits: per and the second loc
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((2 / 4, 2 / 4, 2 / 4))
    assert s["accuracy"] == pytest.approx(6 / 9)  # tokens: 5 of 7, then 1 of 2
    assert (s["precision_per"], s["recall_per"], s["f1_per"], s["support_per"]) == (1.0, 1.0, 1.0, 1)
    assert (s["precision_loc"], s["recall_loc"], s["f1_loc"], s["support_loc"]) == pytest.approx((1.0, 0.5, 2 / 3, 2))
    assert (s["precision_org"], s["recall_org"], s["f1_org"], s["support_org"]) == (0.0, 0.0, 0.0, 1)


def test_squad_normalisation_and_scores():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert answer_f1("Denver Broncos won", "the Denver Broncos") == pytest.approx(0.8)  # p 2/3, r 1
    assert answer_f1("Carolina", "Denver Broncos") == 0.0
    s = squad_scores(["the Eiffel Tower", "Broncos"], [["Eiffel Tower."], ["Carolina Panthers", "Denver Broncos"]])
    # example 1: exact after normalisation; example 2: no exact match, F1 is the max over references (2/3)
    assert s == pytest.approx({"exact_match": 0.5, "f1": (1 + 2 / 3) / 2})


def test_squad_bootstrap_draws_equal_rescoring_each_resample():
    # the QA score resamples per-question rows (stats.Additive); each draw must be what scoring that resample's
    # answers from scratch gives
    from peftlab import stats

    answers = ["Denver Broncos", "the Eiffel Tower", "Paris", "1990", "blue whale"]
    records = [{"id": i, "prediction": answers[i % 5], "gold": [answers[(i * 7) % 5], answers[(i * 3) % 5] + " x"]}
               for i in range(40)]
    fast = stats.replicate(records, get_task("qa").score_predictions, n_boot=50, seed=1)
    slow = stats.replicate(records, lambda rs: squad_scores([r["prediction"] for r in rs], [r["gold"] for r in rs]),
                           n_boot=50, seed=1)
    assert fast.point == pytest.approx(slow.point)
    for key in ("exact_match", "f1"):
        assert np.std(slow.draws[key]) > 0  # the resamples differ, so equal draws are a real check
        np.testing.assert_allclose(fast.draws[key], slow.draws[key], rtol=1e-12)


# ------------------------------------------------------------------------------------ word-piece alignment

def wordpiece_tokenizer():
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "un", "##believ", "##able", "film", "new",
              "##york", "in"]
    vocab = {p: i for i, p in enumerate(pieces)}
    tok = Tokenizer(tok_models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def _recipe(task: str, data: Data, model: str = "unused") -> Recipe:
    return Recipe(name="t", model=Model(model, task=task), data=data, method=LoRA())


def test_first_word_piece_gets_the_label():
    from datasets import Dataset

    tokenizer = wordpiece_tokenizer()
    words = ["the", "unbelievable", "film", "in", "newyork", "zzz"]
    tags = ["O", "B-work", "I-work", "O", "B-loc", "B-misc"]
    labels = ["O", "B-work", "I-work", "B-loc", "B-misc"]
    recipe = _recipe("token_classification", Data("x", text="tokens", label="tags", max_length=32))
    ds = token_classification.prepare(Dataset.from_list([{"tokens": words, "tags": tags}]), tokenizer, recipe,
                                      labels, "train")
    pieces = tokenizer.convert_ids_to_tokens(ds[0]["input_ids"])
    assert pieces == ["[CLS]", "the", "un", "##believ", "##able", "film", "in", "new", "##york", "[UNK]", "[SEP]"]
    O, WORK, IWORK, LOC, MISC, X = 0, 1, 2, 3, 4, -100  # noqa: E741 — O is the tag's own name
    assert ds[0]["labels"] == [X, O, WORK, X, X, IWORK, O, LOC, X, MISC, X]
    # truncation keeps the alignment of what is left: "[CLS] the un ##believ [SEP]"
    short = token_classification.align([None, 0, 1, 1, None], [O, WORK])
    assert short == [X, O, WORK, X, X]


def test_token_classification_labels_from_data_and_errors():
    from datasets import Dataset

    train = Dataset.from_list([{"tokens": ["a", "b"], "tags": ["I-x", "B-x"]}, {"tokens": ["c"], "tags": ["O"]}])
    recipe = _recipe("token_classification", Data("x", text="tokens", label="tags"))
    task = get_task("token_classification")
    assert task.labels(recipe, train) == ["O", "B-x", "I-x"]  # sorted, "O" first
    bad = Dataset.from_list([{"tokens": ["a"], "tags": ["B-y"]}])
    with pytest.raises(PeftlabError, match=r"validation split, sentence 0: label 'B-y' is not in the label set"):
        task.prepare(bad, make_tokenizer(), recipe, ["O", "B-x", "I-x"], "validation")
    with pytest.raises(PeftlabError, match="are not BIO tags"):
        task.labels(recipe, Dataset.from_list([{"tokens": ["a"], "tags": ["PER"]}]))
    with pytest.raises(PeftlabError, match="train split has no column 'ner'"):
        task.labels(_recipe("token_classification", Data("x", text="tokens", label="ner")), train)


# ------------------------------------------------------------------------------------ QA windows and decoding

def _qa_features(context: str, answer: str, data: Data):
    from datasets import Dataset

    start = context.index(answer)
    raw = Dataset.from_list([{"question": "really good", "context": context,
                              "answers": {"text": [answer], "answer_start": [start]}}])
    recipe = _recipe("qa", data)
    return raw, qa.prepare(raw, make_tokenizer(), recipe, [], "test"), recipe


def test_answer_only_in_the_second_window_is_labelled_and_decoded():
    tokenizer = make_tokenizer()
    # 26 words; a window holds 24 - 3 special - 2 question = 19 context tokens: "great" (word 21) is only in window 2
    context = " ".join(["the film was very"] * 5 + ["a great story"] + ["and"] * 3)
    data = Data("x", text="question", text_pair="context", label="answers", max_length=24, stride=4,
                max_answer_length=3, n_best=5)
    raw, features, recipe = _qa_features(context, "great", data)
    assert len(features) == 2 and features["example_id"] == [0, 0]
    assert "token_type_ids" not in features.column_names  # peft's QA wrapper would drop them (see qa._windows)
    # features are sorted by length: the shorter second window comes first
    w1, w2 = sorted(range(2), key=lambda f: next(o for o in features[f]["offset_mapping"] if o)[0])
    first, second = features[w1], features[w2]
    assert w1 == 1 and len(first["input_ids"]) == 24 > len(second["input_ids"])
    assert (first["start_positions"], first["end_positions"]) == (0, 0)  # not in window 1: the CLS token
    s, e = second["start_positions"], second["end_positions"]
    assert tokenizer.convert_ids_to_tokens(second["input_ids"][s:e + 1]) == ["great"]
    assert first["offset_mapping"][:4] == [None] * 4  # [CLS] really good [SEP]: never part of an answer
    # logits: the best-scoring span anywhere is in the question (must be ignored), then "great" in window 2;
    # window 1 offers only a weaker span and an over-long one. Rows are padded to one length, as Trainer does.
    start_logits, end_logits = np.full((2, 24), -5.0), np.full((2, 24), -5.0)
    start_logits[:, 1] = end_logits[:, 1] = 20.0  # "really" in the question
    start_logits[w1, 6], end_logits[w1, 7] = 3.0, 3.0  # a two-token span in window 1
    start_logits[w1, 8], end_logits[w1, 16] = 9.0, 9.0  # 9 tokens: longer than max_answer_length
    start_logits[w2, s], end_logits[w2, e] = 8.0, 8.0
    start_logits[w2, 20:], end_logits[w2, 20:] = 30.0, 30.0  # padding past the end of window 2: never chosen
    compute = metrics_for(qa, features, raw, [], recipe)
    from transformers import EvalPrediction

    scores = compute(EvalPrediction(predictions=(start_logits, end_logits), label_ids=None))
    assert scores == {"exact_match": 1.0, "f1": 1.0}
    offsets = [qa._offset_array(f["offset_mapping"]) for f in features]
    (answer,) = qa.decode(start_logits, end_logits, features["example_id"], offsets, [context], 5, 3)
    assert answer["answer"] == "great" and context[answer["start"]:answer["end"]] == "great"


def test_peft_qa_wrapper_ignores_token_type_ids(bert64):
    """Why qa features carry no token_type_ids: PeftModelForQuestionAnswering.forward accepts them but does not
    pass them on, so a LoRA model would train without them while its merged export would use them. If this
    fails, peft passes them now and qa._windows could keep them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForQuestionAnswering

    torch.manual_seed(0)
    model = AutoModelForQuestionAnswering.from_pretrained(bert64).eval()
    ids, types = torch.tensor([[2, 5, 6, 3, 7, 8, 3]]), torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        with_types, without = model(input_ids=ids, token_type_ids=types).start_logits, model(input_ids=ids).start_logits
        wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["query"], task_type="QUESTION_ANS"))
        through_peft = wrapped(input_ids=ids, token_type_ids=types).start_logits
    assert not torch.allclose(with_types, without)  # the segment embedding matters to the model itself
    assert torch.allclose(through_peft, without)  # but does not reach it through peft (LoRA starts as identity)


def test_qa_bad_data_errors():
    data = Data("x", text="question", text_pair="context", label="answers", max_length=24, stride=4)
    from datasets import Dataset

    wrong = Dataset.from_list([{"question": "good", "context": "a great film",
                                "answers": {"text": ["great"], "answer_start": [3]}}])
    with pytest.raises(PeftlabError, match=r"train split, row 0: answer 'great' at answer_start=3 does not match "
                                           r"the context there \('reat '\); fix answer_start"):
        qa.prepare(wrong, make_tokenizer(), _recipe("qa", data), [], "train")
    long_question = Dataset.from_list([{"question": "good " * 20, "context": "a great film",
                                        "answers": {"text": ["great"], "answer_start": [2]}}])
    with pytest.raises(PeftlabError, match="the question has 20 tokens, leaving no new context"):
        qa.prepare(long_question, make_tokenizer(), _recipe("qa", data), [], "train")
    with pytest.raises(PeftlabError, match="data.text_pair: qa reads a question and a context"):
        qa.columns(_recipe("qa", Data("x", text="question", label="answers")))


def test_squad_json_is_flattened(tmp_path):
    from peftlab.data import read_file

    examples = squad_examples(3, seed=4)
    write_squad(tmp_path / "test.json", examples)
    ds = read_file(tmp_path / "test.json")
    assert ds.column_names == ["id", "title", "context", "question", "answers"] and len(ds) == 3
    assert ds[0]["answers"] == {"text": [a["text"] for a in examples[0]["answers"]],
                                "answer_start": [a["answer_start"] for a in examples[0]["answers"]]}
    (tmp_path / "plain.json").write_text(json.dumps([{"text": "x", "label": 1}]))  # other JSON: read as before
    assert read_file(tmp_path / "plain.json").column_names == ["text", "label"]


# ------------------------------------------------------------------------------------------ regression data

def test_regression_target_errors(tmp_path, tiny_bert, capsys):
    from datasets import Dataset

    recipe = _recipe("regression", Data("x", text="a", text_pair="b", label="score"))
    task = get_task("regression")
    assert task.model_kwargs(task.labels(recipe, Dataset.from_list([{"a": "x", "b": "y", "score": 1.0}]))) == {
        "num_labels": 1, "problem_type": "regression", "id2label": {0: "score"}, "label2id": {"score": 0}}
    bad = Dataset.from_list([{"a": "good", "b": "bad", "score": "1.5"}, {"a": "good", "b": "bad", "score": "n/a"}])
    with pytest.raises(PeftlabError, match=r"^train split, row 1: score='n/a' is not a number; fix that row"):
        task.prepare(bad, make_tokenizer(), recipe, ["score"], "train")
    # through the CLI: one line, before training
    data = tmp_path / "data"
    rows = stsb_rows(4, seed=3)
    rows[2] = rows[2][:4] + ("high",) + rows[2][5:]
    write_stsb(data / "stsb" / "train.tsv", rows)
    write_stsb(data / "stsb" / "validation.tsv", stsb_rows(4, seed=4))
    recipe_path = task_recipe(tmp_path / "r.py", tiny_bert, "regression")
    capsys.readouterr()
    assert run_cli.main([str(recipe_path), "--data-dir", str(data), "--runs-dir", str(tmp_path / "runs"),
                         "--reports-dir", ""]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the line naming the (failed) run directory
    # the data seed may hold the bad row out of train for checkpoint selection: named in the part it landed in
    assert re.match(r"error: (train split, row \d|selection split, row 0): score='high' is not a number; fix that row",
                    err), err
    # a missing column is caught before a run directory exists
    recipe_path.write_text(recipe_path.read_text().replace('label="score"', 'label="similarity"'))
    assert run_cli.main([str(recipe_path), "--data-dir", str(data), "--runs-dir", str(tmp_path / "runs2")]) == 2
    assert "train.tsv: no column 'similarity'" in capsys.readouterr().err and not (tmp_path / "runs2").exists()


@pytest.mark.parametrize("task", ["stsb", "wnut17", "squad"])
def test_recipes_and_comparisons_load(task):
    from peftlab.comparison import load_comparison

    recipes = Path(__file__).resolve().parent.parent / "recipes"
    comparison, variants = load_comparison(recipes / f"compare_{task}.py")
    kinds = {(load_recipe(v.recipe).method.kind, load_recipe(v.recipe).quant is not None) for v in variants}
    assert {("full", False), ("lora", False), ("lora", True)} <= kinds and any(k in ("houlsby", "pfeiffer") for k, _ in kinds)
    assert comparison.baseline == f"full_{task}"


# -------------------------------------------------------------------------------- every method on every task

@pytest.fixture(scope="module")
def bert64(tmp_path_factory) -> Path:
    return make_bert(tmp_path_factory.mktemp("bert64-tasks"), hidden=64)  # bitsandbytes needs blocks of 64


METHODS = ["LoRA(r=4, target='all-linear')", "DoRA(r=4)", "IA3()", "PrefixTuning(num_virtual_tokens=4)",
           "PromptTuning(num_virtual_tokens=4)", "Houlsby()", "Pfeiffer()", "FullFineTuning()"]
QLORA = ("LoRA(r=4, target='all-linear')", "quant=Quant4bit(),")


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("method, quant", [(m, "") for m in METHODS] + [QLORA],
                         ids=[m.split("(")[0] for m in METHODS] + ["QLoRA"])
def test_every_method_trains_on_every_task(tmp_path, bert64, task_data, task, method, quant):
    from peftlab import data as data_stage
    from peftlab import plan
    from peftlab.building import build_model

    path = task_recipe(tmp_path / "r.py", bert64, task, method=method, extra=quant)
    if method.startswith("PromptTuning") and task != "regression":  # refused at load, in one line
        with pytest.raises(PeftlabError, match=f"PromptTuning does not support model.task='{task}'") as info:
            load_recipe(path)
        assert "\n" not in str(info.value)
        return
    recipe = load_recipe(path)
    task_mod = get_task(task)
    resolved = models.resolve(recipe.model.name)
    tokenizer = make_tokenizer()
    splits = data_stage.load_splits(recipe.data, task_data)
    labels = task_mod.labels(recipe, splits.train)
    features = task_mod.prepare(splits.train.select(range(8)), tokenizer, recipe, labels, "train")
    # the memory planner builds the same model on the meta device from model_kwargs
    assert plan.predict(recipe, task_mod, resolved, labels, max(features["length"]))["predicted_train_peak_bytes"] > 0
    model = build_model(recipe, task_mod, resolved, labels)
    inputs = ("input_ids", "attention_mask", "token_type_ids", "labels", "start_positions", "end_positions")
    batch = task_mod.collator(tokenizer)([{k: v for k, v in f.items() if k in inputs} for f in features])
    model.train()
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    trained = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0]
    heads = task_mod.HEADS
    assert any(any(h in n for h in heads) for n in trained), trained  # the new head learns
    if not method.startswith("FullFineTuning"):
        assert any(not any(h in n for h in heads) for n in trained), trained  # and so does the method


# --------------------------------------------------------------------------- end to end: run, reload, predict

def _run_and_rescore(tmp_path, recipe: Path, data: Path, capsys) -> tuple[Path, dict, dict]:
    run_dir = run_recipe(tmp_path, recipe, data)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # predictions.jsonl reproduces every figure the task computes, and the report gives each an interval
    records = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    task = json.loads((run_dir / "recipe.json").read_text())["model"]["task"]
    scored = get_task(task).score_predictions(records)
    assert scored and scored == pytest.approx({k: metrics["task_metrics"][k] for k in scored})
    assert len(records) == metrics["protocol"]["parts"]["reported"]["examples"]
    assert "95 % CI" in (run_dir / "report.md").read_text()
    capsys.readouterr()
    assert predict.main([str(run_dir), "--eval", "--data-dir", str(data)]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval"]
    return run_dir, metrics, scored


@pytest.mark.slow
def test_regression_end_to_end(tmp_path, tiny_bert, task_data, capsys):
    # 10 epochs: at 6 the Pearson of this tiny task depends on the data order more than on the method (seeds 0-3
    # gave 0.35/0.56/0.70/0.14 with the per-epoch seeded order, 0.52/0.12/0.19/0.28 with Trainer's global-RNG order).
    # fp32: under bf16 autocast (a CPU with native bf16) this rate can drive the pooled output of the tiny model to a
    # constant, the same score for every input, on one host and not another
    recipe = task_recipe(tmp_path / "r.py", tiny_bert, "regression", name="tiny_stsb",
                         train="epochs=10, lr=1e-2, batch_size=16, logging_steps=5, precision='fp32'")
    run_dir, metrics, scored = _run_and_rescore(tmp_path, recipe, task_data, capsys)
    m = metrics["task_metrics"]
    assert set(m) == {"loss", "pearson", "spearman"} and metrics["labels"] == ["score"]
    # the score follows the sentiment words: learnable (Pearson 0.25 on the 48 validation pairs since the checkpoint
    # is chosen on 18 held-out training pairs; 0.5 before, with the selection made on validation itself)
    assert m["pearson"] > 0.2
    assert scored["pearson"] == pytest.approx(m["pearson"]) and scored["spearman"] == pytest.approx(m["spearman"])
    assert f"{m['pearson']:.4f}" in (run_dir / "report.md").read_text()
    assert predict.main([str(run_dir), "a great film\ta lovely movie", "a dull film\tan awful mess"]) == 0
    high, low = [json.loads(line)["score"] for line in capsys.readouterr().out.strip().splitlines()]
    assert high > low


@pytest.mark.slow
def test_token_classification_end_to_end(tmp_path, tiny_bert, task_data, capsys):
    recipe = task_recipe(tmp_path / "r.py", tiny_bert, "token_classification", name="tiny_wnut",
                         train="epochs=10, lr=1e-2, batch_size=16, logging_steps=5, precision='fp32'")
    run_dir, metrics, scored = _run_and_rescore(tmp_path, recipe, task_data, capsys)
    m = metrics["task_metrics"]
    assert metrics["labels"] == ["O", "B-neg", "B-pos", "I-pos"]
    assert m["f1"] > 0.8 and m["support_pos"] + m["support_neg"] == 48  # one entity per sentence
    for key in ("f1", "precision", "recall", "f1_pos", "f1_neg"):
        assert scored[key] == pytest.approx(m[key]), key
    report = (run_dir / "report.md").read_text()
    assert "Per entity type" in report and f"| pos | {m['precision_pos']:.4f} |" in report
    # raw sentences (training sentences, irregular spaces): entities come back as text spans with their type
    sentences = [next(s for s in ner_sentences(160, seed=1) if s[0][1] == "O" and s[1][1] == kind)
                 for kind in ("B-pos", "B-neg")]
    texts = ["  ".join(w for w, _ in s) for s in sentences]
    assert predict.main([str(run_dir), *texts]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    for row, sentence, text in zip(rows, sentences, texts):
        assert row["tags"] == [t for _, t in sentence]
        ((kind, start, end),) = entity_spans(row["tags"])
        (entity,) = row["entities"]
        assert entity["text"] == "  ".join(w for w, _ in sentence[start:end]) == text[entity["start"]:entity["end"]]
        assert entity["type"] == kind and entity["start"] == len("  ".join(w for w, _ in sentence[:start])) + 2


@pytest.mark.slow
def test_qa_end_to_end(tmp_path, tiny_bert, task_data, capsys):
    recipe = task_recipe(tmp_path / "r.py", tiny_bert, "qa", name="tiny_squad",
                         train="epochs=8, lr=1e-2, batch_size=16, logging_steps=5")
    run_dir, metrics, scored = _run_and_rescore(tmp_path, recipe, task_data, capsys)
    m = metrics["task_metrics"]
    assert set(m) == {"loss", "exact_match", "f1"} and metrics["labels"] == []
    assert m["f1"] > 0.5  # the answer is the one positive word
    assert scored["f1"] == pytest.approx(m["f1"]) and scored["exact_match"] == pytest.approx(m["exact_match"])
    context = "the plot was very and the story was " * 3 + "lovely and the film"
    assert predict.main([str(run_dir), "really good", "--context", context]) == 0
    row = json.loads(capsys.readouterr().out)
    assert context[row["start"]:row["end"]] == row["answer"] and row["answer"].startswith("lovely")
    assert predict.main([str(run_dir), "really good"]) == 2
    assert "give the passage the questions are about with --context" in capsys.readouterr().err
    # the merged export answers like the adapter (start/end positions compared) and scores the same
    from peftlab import merge

    assert merge.main([str(run_dir), "--out", str(tmp_path / "export"), "--data-dir", str(task_data)]) == 0
    record = json.loads((tmp_path / "export" / artifacts.EXPORT_RECORD).read_text())
    assert record["verification"]["max_abs_logit_diff"] <= 1e-4 and record["verification"]["label_agreement"] == 1.0
    assert record["export_metrics"]["f1"] == pytest.approx(m["f1"])


def test_regression_label_scale_trains_on_scaled_targets_and_predicts_on_the_data_scale(tmp_path, tiny_bert, task_data):
    from peftlab import data as data_stage
    from peftlab.building import build_model

    path = task_recipe(tmp_path / "r.py", tiny_bert, "regression",
                       data=TASKS["regression"].replace("max_length=32", "max_length=32, label_scale=5.0"))
    recipe = load_recipe(path)
    task = get_task("regression")
    splits = data_stage.load_splits(recipe.data, task_data)
    features = task.prepare(splits.train, make_tokenizer(), recipe, ["score"], "train")
    assert sorted(features["labels"]) == pytest.approx(sorted(float(s) / 5 for s in splits.train["score"]))
    model = build_model(recipe, task, models.resolve(recipe.model.name), ["score"])
    pair = "a great film\tthe plot was lovely"
    raw = task.predict(model, make_tokenizer(), [pair], ["score"])[0]["score"]
    assert task.predict(model, make_tokenizer(), [pair], ["score"], label_scale=5.0)[0]["score"] == pytest.approx(5 * raw)
    with pytest.raises(PeftlabError, match="data.label_scale: scales regression targets; remove it"):
        load_recipe(task_recipe(tmp_path / "c.py", tiny_bert, "token_classification",
                                data=TASKS["token_classification"].replace(")", ", label_scale=2.0)")))
    with pytest.raises(PeftlabError, match=r"data.label_scale=0.0: must be > 0"):
        load_recipe(path, ["data.label_scale=0"])

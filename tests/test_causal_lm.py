"""Causal-LM fine-tuning on a tiny Llama built here, with a word-level tokenizer that has a chat template:
response-only labels, packing without cross-example attention, generation and answer extraction, runs end to end."""

from __future__ import annotations

import json
import random
import re
import textwrap
from pathlib import Path

import pytest
import torch

from peftlab import artifacts, load_recipe, merge, predict
from peftlab.errors import PeftlabError
from peftlab.tasks import causal_lm

from conftest import run_recipe

SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
WORDS = ["system", "user", "assistant", "what", "is", "plus", "and", "so", "the", "answer", "####", "<<", ">>", "="]
VOCAB = SPECIAL + WORDS + [str(n) for n in range(20)]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_chat_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<|im_end|>", bos_token="<|im_start|>",
                                        additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_llama(path: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = make_chat_tokenizer()
    config = LlamaConfig(vocab_size=len(VOCAB), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, initializer_range=0.2, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)  # hidden 64: bitsandbytes quantizes in blocks of 64
    tokenizer.save_pretrained(path)
    return path


def sums(n: int, seed: int) -> list[dict]:
    """'what is 3 plus 4' -> '3 plus 4 = <<3+4>> 7 so the answer is 7 #### 7' (GSM8K's shape, in this vocabulary)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"question": f"what is {a} plus {b}",
                     "answer": f"{a} plus {b} = << {a} plus {b} >> {a + b}\nso the answer is {a + b}\n#### {a + b}"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def sums_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_jsonl(root / "sums" / "train.jsonl", sums(160, seed=1))
    write_jsonl(root / "sums" / "test.jsonl", sums(8, seed=2))
    return root


def write_recipe(path: Path, model_dir: Path, method: str = "LoRA(r=8, alpha=16, dropout=0.0, target='all-linear')",
                 data: str = "", train: str = "epochs=2, lr=1e-2, batch_size=8, eval_batch_size=8, logging_steps=5",
                 extra: str = "") -> Path:
    path.write_text(textwrap.dedent(f"""\
        from peftlab import *
        recipe = Recipe(
            name="tiny_causal",
            model=Model({str(model_dir)!r}, task="causal_lm"),
            data=Data("sums", text="question", label="answer", max_length=64, eval_split="test", selection=16,
                      generate_split="test", generate_limit=6, max_new_tokens=24, {data}),
            method={method},
            train=Train({train}),
            {extra}
        )
        """))
    return path


def _features(llama: Path, rows: list[dict], **data):
    from peftlab import Data, LoRA, Model, Recipe

    recipe = Recipe("t", Model(str(llama), task="causal_lm"), Data("sums", text="question", label="answer", **data),
                    LoRA())
    from datasets import Dataset

    tokenizer = make_chat_tokenizer()
    return tokenizer, recipe, causal_lm.prepare(Dataset.from_list(rows), tokenizer, recipe, [], "train")


# ------------------------------------------------------------------------------------------- labels

def test_loss_counts_exactly_the_response_tokens(llama):
    rows = sums(3, seed=0)
    tokenizer, _, features = _features(llama, rows)
    for row, feature in zip(rows, features):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["question"]}], tokenize=False,
                                               add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(row["answer"] + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        assert feature["input_ids"] == prompt_ids + response_ids
        assert feature["labels"] == [-100] * len(prompt_ids) + response_ids
        assert response_ids[-1] == tokenizer.eos_token_id  # the model learns to stop
        assert feature["length"] == len(prompt_ids) + len(response_ids)


def test_prompt_template_and_strip_regex(llama):
    rows = sums(2, seed=0)
    tokenizer, _, features = _features(llama, rows, prompt_template="user {question} assistant",
                                       strip_regex=r"<<[^>]*>>")
    for row, feature in zip(rows, features):
        prompt_ids = tokenizer(f"user {row['question']} assistant", add_special_tokens=False)["input_ids"]
        stripped = row["answer"].split(" << ")[0] + row["answer"].split(">>")[1]
        response_ids = tokenizer(stripped, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert feature["labels"] == [-100] * len(prompt_ids) + response_ids
        assert "<<" not in tokenizer.decode([t for t in feature["labels"] if t != -100])


def test_too_long_examples_are_left_out_not_cut(llama, capsys):
    rows = sums(4, seed=0)
    rows[1]["answer"] = " ".join(["so"] * 80)
    _, _, features = _features(llama, rows, max_length=64)
    assert len(features) == 3 and max(features["length"]) <= 64
    assert "1 of 4 examples are longer than data.max_length=64" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- packing

def test_packing_keeps_examples_apart(llama):
    from transformers import AutoModelForCausalLM

    rows = sums(12, seed=3)
    tokenizer, _, plain = _features(llama, rows, max_length=96)
    _, _, packed = _features(llama, rows, max_length=96, packing=True)
    assert len(packed) < len(plain) and max(packed["length"]) <= 96
    # same tokens in the same order; positions restart and the first label of each example is -100
    assert sum(packed["input_ids"], []) == sum(plain["input_ids"], [])
    expected_labels = sum(([-100] + f["labels"][1:] for f in plain), [])
    assert sum(packed["labels"], []) == expected_labels
    assert sum(packed["position_ids"], []) == sum((list(range(n)) for n in plain["length"]), [])

    model = AutoModelForCausalLM.from_pretrained(llama).eval()
    collate = causal_lm.collator(tokenizer)
    with torch.no_grad():
        batch = collate(list(packed))  # rows of different lengths: padding is a segment of its own
        assert "attention_mask" not in batch and batch["use_cache"] is False
        logits = model(**batch).logits  # as Trainer calls it
        alone = [model(input_ids=torch.tensor([f["input_ids"]])).logits[0] for f in plain]
    i = 0
    for row, positions in enumerate(packed["position_ids"]):
        starts = [p for p, pos in enumerate(positions) if pos == 0] + [len(positions)]
        for start, end in zip(starts, starts[1:]):
            assert torch.allclose(logits[row, start:end], alone[i], atol=1e-5), f"example {i} saw its neighbours"
            i += 1
    assert i == len(plain)
    # the validation NLL does not change with packing
    with torch.no_grad():
        nll = [causal_lm.preprocess_logits(model(**collate(list(ds))).logits, collate(list(ds))["labels"]).sum(0)
               for ds in (plain, packed)]
    assert nll[0][1] == nll[1][1] and torch.allclose(nll[0][0], nll[1][0], rtol=1e-5)


def test_packing_refused_where_examples_would_mix(tmp_path, llama):
    path = write_recipe(tmp_path / "r.py", llama, method="PrefixTuning(num_virtual_tokens=4)", data="packing=True")
    with pytest.raises(PeftlabError, match="PrefixTuning cannot keep packed examples apart"):
        load_recipe(path)


# ------------------------------------------------------------------------------------ answers, generation

@pytest.mark.parametrize("text, number", [
    ("48/2 = <<48/2=24>>24 clips\n#### 72", "72"),
    ("#### 1,000", "1000"),
    ("She pays $18.00 in total.", "18"),  # no marker: the last number, by value
    ("#### 5\nthen 7 more", "5"),  # the marker wins over later numbers
    ("It is -3.50 degrees", "-3.5"),
    ("I cannot tell.", None),
    ("#### none", None),
])
def test_final_number(text, number):
    assert causal_lm.final_number(text) == number


def _wrapped(llama: Path, method):
    from transformers import AutoModelForCausalLM

    from peftlab.methods.base import Context

    torch.manual_seed(0)
    return method.wrap(AutoModelForCausalLM.from_pretrained(llama), Context((), "CAUSAL_LM", False, str(llama)))


def _randomised(model):
    """The model with its trainable weights drawn at random, so the adapter matters (LoRA's B starts at zero)."""
    for param in model.parameters():
        if param.requires_grad:
            torch.nn.init.normal_(param, std=0.5)
    return model


@pytest.mark.parametrize("method", ["LoRA", "PrefixTuning"])
def test_batched_left_padded_generation_matches_one_by_one(llama, method):
    """Greedy generation through the key-value cache, in batches with left padding, as each prompt alone."""
    from peftlab import LoRA, PrefixTuning

    model = _randomised(_wrapped(llama, LoRA(r=4, target="all-linear") if method == "LoRA"
                                 else PrefixTuning(num_virtual_tokens=4)))
    tokenizer = make_chat_tokenizer()
    prompts = [causal_lm.prompt_text(tokenizer, load_recipe_data(), {"question": q})
               for q in ("what is 3 plus 4", "what is 12 plus 1 and 2 plus 2 and 5", "what is 9")]
    batched, n = causal_lm.generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=3)
    alone = [causal_lm.generate(model, tokenizer, [p], max_new_tokens=8)[0][0] for p in prompts]
    assert batched == alone and 3 <= n <= 24
    assert len(set(batched)) > 1  # not a degenerate model that says the same thing to everything


def test_generation_batches_prompts_by_token_length_and_restores_their_order(llama, monkeypatch):
    """Batches of prompts of similar token length, not character length (the second question has more characters
    but fewer tokens than the first); outputs back in the prompts' order and the same as each prompt alone."""
    from peftlab import LoRA

    model = _randomised(_wrapped(llama, LoRA(r=4, target="all-linear")))
    tokenizer = make_chat_tokenizer()
    questions = ["what is 1 = 2 = 3 = 4", "what is 19 plus 18 plus 17", "what is 12", "what is 9 plus 1", "what is 10"]
    prompts = [causal_lm.prompt_text(tokenizer, load_recipe_data(), {"question": q}) for q in questions]
    widths, greedy_pruned = [], causal_lm.greedy_pruned

    def recording(model, encoded, *args):
        widths.append(encoded["attention_mask"].sum(1).tolist())
        return greedy_pruned(model, encoded, *args)

    monkeypatch.setattr(causal_lm, "greedy_pruned", recording)
    texts, counts = causal_lm.generate_counted(model, tokenizer, prompts, max_new_tokens=6, batch_size=2)
    monkeypatch.undo()
    lengths = sorted(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    assert [n for batch in widths for n in batch] == lengths  # shortest first, by tokens
    alone = [causal_lm.generate_counted(model, tokenizer, [p], max_new_tokens=6) for p in prompts]
    assert texts == [t[0] for t, _ in alone] and counts == [c[0] for _, c in alone]
    assert causal_lm.generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=2) == (texts, sum(counts))


def test_greedy_generation_drops_finished_rows_and_keeps_generates_tokens(llama):
    """greedy_pruned computes only the rows still generating, and its tokens are transformers' generate's with the
    same end token. The end token is one the model itself produces early for one prompt, later or never for others,
    so the rows end at different steps."""
    from peftlab import LoRA

    model = _randomised(_wrapped(llama, LoRA(r=4, target="all-linear"))).eval()
    tokenizer = make_chat_tokenizer()
    questions = ["what is 3 plus 4", "what is 12 plus 1 and 2", "what is 9", "what is 19 plus 18", "what is 7 and 5"]
    prompts = [causal_lm.prompt_text(tokenizer, load_recipe_data(), {"question": q}) for q in questions]
    encoded = tokenizer(prompts, add_special_tokens=False, padding=True, padding_side="left",
                        return_token_type_ids=False, return_tensors="pt")
    with torch.no_grad():
        unending = causal_lm.greedy_pruned(model, encoded, 10, -1)
        def first_steps(token):
            return [row.index(token) if token in row else None for row in unending]

        eos = max({t for row in unending for t in row}, key=lambda t: len(set(first_steps(t))))
        assert len(set(first_steps(eos))) > 1, first_steps(eos)
        batch_rows = []
        hook = model.get_base_model().register_forward_pre_hook(
            lambda module, args, kwargs: batch_rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
        pruned = causal_lm.greedy_pruned(model, encoded, 10, eos)
        hook.remove()
        reference = model.generate(**encoded, max_new_tokens=10, eos_token_id=eos, pad_token_id=0, do_sample=False)
    assert batch_rows[0] == len(prompts) and batch_rows[-1] < len(prompts)  # finished rows left the batch
    assert batch_rows == sorted(batch_rows, reverse=True)
    expected = [row[:row.index(eos) + 1] if eos in row else row
                for row in reference[:, encoded["input_ids"].shape[1]:].tolist()]
    assert pruned == expected


@pytest.mark.parametrize("kind", ["LoRA", "DoRA", "QLoRA", "PrefixTuning"])
def test_generation_merges_a_float_adapter_and_takes_it_out_after(llama, kind):
    """adapter_merged folds a LoRA or DoRA adapter into the float base while it is open (the model's outputs stay the
    adapter's, up to rounding) and takes it out after (the base weights come back); a 4-bit base and prompt learning
    are left as they are."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from peftlab import DoRA, LoRA, Model, PrefixTuning, Quant4bit, Recipe
    from peftlab.building import build_model
    from peftlab.models import Resolved

    if kind == "QLoRA":
        recipe = Recipe("t", Model(str(llama), task="causal_lm"), load_recipe_data(),
                        LoRA(r=4, dropout=0.0, target="all-linear"), quant=Quant4bit())
        model = _randomised(build_model(recipe, causal_lm, Resolved(str(llama), "local"), []))
    else:
        method = {"LoRA": LoRA, "DoRA": DoRA}[kind](r=4, target="all-linear") if kind != "PrefixTuning" else \
            PrefixTuning(num_virtual_tokens=4)
        model = _randomised(_wrapped(llama, method))
    model.eval()
    tokenizer = make_chat_tokenizer()
    prompts = [causal_lm.prompt_text(tokenizer, load_recipe_data(), {"question": q})
               for q in ("what is 3 plus 4", "what is 12 plus 1 and 2", "what is 9")]
    encoded = tokenizer(prompts, add_special_tokens=False, padding=True, padding_side="left",
                        return_token_type_ids=False, return_tensors="pt")
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    with torch.no_grad():
        logits = model(**encoded).logits
        texts = causal_lm.generate_counted(model, tokenizer, prompts, max_new_tokens=6)
        with causal_lm.adapter_merged(model) as merged:
            assert merged == (kind in ("LoRA", "DoRA"))
            assert all(layer.merged == merged for layer in layers)
            merged_logits = model(**encoded).logits
            merged_texts = causal_lm.generate_counted(model, tokenizer, prompts, max_new_tokens=6)
    assert not any(layer.merged for layer in layers)
    torch.testing.assert_close(merged_logits, logits, rtol=1e-4, atol=1e-4)
    assert merged_texts == texts
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), weights[name], rtol=1e-5, atol=1e-6)


def load_recipe_data():
    from peftlab import Data

    return Data("sums", text="question", label="answer")


# -------------------------------------------------------------------------------------------- methods

@pytest.mark.parametrize("method", ["DoRA(r=4, target='all-linear')", "IA3()", "PrefixTuning(num_virtual_tokens=4)",
                                    "PromptTuning(num_virtual_tokens=4)", "Houlsby()", "Pfeiffer()",
                                    "FullFineTuning()"])
def test_every_method_trains_the_causal_lm(llama, method):
    import peftlab

    model = _wrapped(llama, eval(method, vars(peftlab)))
    tokenizer, _, features = _features(llama, sums(4, seed=0))
    batch = causal_lm.collator(tokenizer)([{k: f[k] for k in ("input_ids", "labels")} for f in features])
    model.train()
    model(**batch).loss.backward()
    trained = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0]
    assert trained
    if not method.startswith("Full"):
        assert not any("lm_head" in n or "embed_tokens" in n for n in trained), trained  # the output layer stays


# ------------------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, llama, sums_dir):
    tmp = tmp_path_factory.mktemp("causal-lora")
    return run_recipe(tmp, write_recipe(tmp / "r.py", llama), sums_dir)


def test_lora_run_learns_and_records_before_and_after(lora_run):
    metrics = json.loads((lora_run / "metrics.json").read_text())
    before, after = metrics["before"], metrics["task_metrics"]
    assert set(after) >= {"loss", "perplexity", "nll_per_token", "exact_match"}
    assert after["perplexity"] < 0.5 * before["perplexity"]  # the sums are easy: training clearly helps
    gen = metrics["generation"]
    assert gen["prompts"] == 6 and gen["new_tokens_after"] > 0 and len(gen["samples"]) == 3
    outputs = json.loads((lora_run / "generations.json").read_text())
    assert len(outputs["before"]) == len(outputs["after"]) == 6
    assert after["exact_match"] == sum(o["correct"] for o in outputs["after"]) / 6
    # predictions.jsonl: a perplexity record per reported example, a generation record per prompt; they give back
    # the run's perplexity (summed NLL / tokens) and exact match
    records = [json.loads(line) for line in (lora_run / "predictions.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds.count("perplexity") == 8 and kinds.count("generation") == 6
    scored = causal_lm.score_predictions(records)
    assert scored == pytest.approx({k: after[k] for k in ("perplexity", "nll_per_token", "exact_match")})
    assert metrics["protocol"]["parts"]["selection"] == {"split": "train", "examples": 16, "of": 160}
    assert metrics["protocol"]["parts"]["generation"] == {"split": "test", "examples": 6, "of": 8}
    assert all(o["answer"] == causal_lm.final_number(o["generation"]) for o in outputs["after"])
    report = (lora_run / "report.md").read_text()
    assert "## Before and after training" in report and "### Sample 1" in report
    env = json.loads((lora_run / "environment.json").read_text())
    assert env["data"]["eval_examples"] == 8 and env["data"]["train_examples"] == 144
    assert set(env["data"]["files"]) == {"sums/train.jsonl", "sums/test.jsonl"}
    from safetensors.torch import load_file

    keys = load_file(lora_run / "adapter" / "adapter_model.safetensors").keys()
    assert keys and all("lora_" in k for k in keys)  # no lm_head or embeddings copied into the adapter



def test_runs_of_one_base_score_it_once_with_base_cache(tmp_path, llama, sums_dir, monkeypatch):
    """A comparison's variants share the base's before-training figures: the second run (another method, another
    seed) reads them from --base-cache instead of evaluating and generating again; a quantized base is another key."""
    cache = tmp_path / "base"
    scored = []
    original = causal_lm.Evaluation._score_base
    monkeypatch.setattr(causal_lm.Evaluation, "_score_base", lambda self, base: scored.append(1) or original(self, base))
    first = run_recipe(tmp_path / "a", write_recipe(tmp_path / "a.py", llama), sums_dir, "--base-cache", str(cache))
    second = run_recipe(tmp_path / "b", write_recipe(tmp_path / "b.py", llama, method="IA3()"), sums_dir,
                        "--base-cache", str(cache), "--set", "train.seed=3")
    assert len(scored) == 1 and len(list(cache.iterdir())) == 1
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (first, second))
    assert b["before"] == a["before"] and "before_reused_from" in b and "before_reused_from" not in a
    before = [json.loads((run / "generations.json").read_text())["before"] for run in (first, second)]
    assert before[0] == before[1]
    run_recipe(tmp_path / "c", write_recipe(tmp_path / "c.py", llama, extra="quant=Quant4bit(),"), sums_dir,
               "--base-cache", str(cache))
    assert len(scored) == 2 and len(list(cache.iterdir())) == 2

def test_predict_generates_and_rescores(lora_run, sums_dir, capsys):
    capsys.readouterr()
    assert predict.main([str(lora_run), "what is 2 plus 3", "--max-new-tokens", "6"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["prompt"] == "what is 2 plus 3" and len(row["generation"].split()) <= 6
    assert row["final_number"] == causal_lm.final_number(row["generation"])
    assert predict.main([str(lora_run), "--eval", "--data-dir", str(sums_dir)]) == 0
    rescored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval"]
    run_metrics = json.loads((lora_run / "metrics.json").read_text())["task_metrics"]
    assert rescored["perplexity"] == pytest.approx(run_metrics["perplexity"], rel=1e-5)
    assert predict.main([str(lora_run), "what is 1", "--context", "x"]) == 2  # a QA option, refused in one line


def test_merge_is_exact_for_the_causal_lm(lora_run, sums_dir, tmp_path, capsys):
    out = tmp_path / "export"
    assert merge.main([str(lora_run), "--out", str(out), "--data-dir", str(sums_dir), "--compare", "8"]) == 0
    record = json.loads((out / artifacts.EXPORT_RECORD).read_text())
    assert record["verification"]["max_abs_logit_diff"] <= 1e-4
    run_metrics = json.loads((lora_run / "metrics.json").read_text())["task_metrics"]
    assert record["export_metrics"]["perplexity"] == pytest.approx(run_metrics["perplexity"], rel=1e-4)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).config.tie_word_embeddings
    capsys.readouterr()
    assert predict.main([str(out), "what is 2 plus 3", "--max-new-tokens", "4"]) == 0
    assert "generation" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_auto_checkpointing_follows_the_memory_available(tmp_path, llama, sums_dir, monkeypatch):
    """A causal LM left at gradient_checkpointing="auto" trains without checkpointing where the plan without it fits
    half the memory available, with it where not; the run records the choice, its plan follows it, and its report
    gives the grounds."""
    from peftlab import plan

    path = write_recipe(tmp_path / "r.py", llama, train="epochs=1, lr=1e-2, batch_size=16, logging_steps=5")
    for available, checkpointed in ((64 * 2**30, False), (2**20, True)):
        monkeypatch.setattr(plan, "available_memory", lambda available=available: (available, "available memory"))
        run = run_recipe(tmp_path / f"available{available}", path, sums_dir)
        chosen = json.loads((run / "environment.json").read_text())["levers"]
        assert chosen["gradient_checkpointing"] is checkpointed and chosen["budget"] is None
        assert chosen["auto"]["gradient_checkpointing"] is checkpointed and chosen["auto"]["available_bytes"] == available
        parts = json.loads((run / "metrics.json").read_text())["memory_plan"]
        assert ("activations: layer inputs (checkpointed)" in parts) is checkpointed
        report = (run / "report.md").read_text()
        assert f"gradient checkpointing {'on' if checkpointed else 'off'} (auto: the plan without it" in report


@pytest.mark.slow
def test_qlora_run_keeps_the_output_layer_in_full_precision(tmp_path, llama, sums_dir):
    path = write_recipe(tmp_path / "r.py", llama, train="epochs=1, lr=1e-2, batch_size=16, logging_steps=5",
                        extra="quant=Quant4bit(),")
    from peftlab.artifacts import load_trained

    run = run_recipe(tmp_path, path, sums_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["quantized_storage"]["bits_per_param"] < 5
    model = load_trained(run).model.get_base_model()
    import bitsandbytes as bnb

    assert isinstance(model.model.layers[0].mlp.down_proj.base_layer, bnb.nn.Linear4bit)
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight is model.model.embed_tokens.weight
    assert metrics["before"]["perplexity"] > metrics["task_metrics"]["perplexity"]


def test_4bit_gradients_survive_an_evaluation(llama):
    """bitsandbytes repacks 4-bit weights for CPU inference on eval (AVX512-BF16 CPUs) into a layout without
    autograd; peftlab turns that off, so training after an evaluation (or after the base-model evaluation that
    causal_lm runs first) gets the same gradients as before it."""
    from peftlab import Data, LoRA, Model, Quant4bit, Recipe
    from peftlab.building import build_model
    from peftlab.models import Resolved

    recipe = Recipe("t", Model(str(llama), task="causal_lm"), Data("sums", text="question", label="answer"),
                    LoRA(r=4, dropout=0.0, target="all-linear"), quant=Quant4bit())
    model = build_model(recipe, causal_lm, Resolved(str(llama), "local"), [])
    tokenizer, _, features = _features(llama, sums(4, seed=0))
    batch = causal_lm.collator(tokenizer)([{k: f[k] for k in ("input_ids", "labels")} for f in features])

    def gradients():
        model.train()
        model.zero_grad()
        model(**batch).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    before = gradients()
    model.eval()
    with torch.no_grad():
        model(**batch)
    after = gradients()
    assert before.keys() == after.keys() and len(before) > 0
    assert all(torch.allclose(before[n], after[n], rtol=1e-4, atol=1e-7) for n in before)


# ------------------------------------------------------------------------------------------- bad input

SPLITS, COLUMNS = 'eval_split="test", selection=16,', 'text="question", label="answer", '  # dropped from the recipe


@pytest.mark.parametrize("data, drop, message", [
    ("eval_split='train'", SPLITS, "the reported split must not be the train split"),
    ("selection=1.5", SPLITS, "use a fraction of the train split in"),
    ("selection=0", SPLITS, "use a fraction of the train split in"),
    ("strip_regex='(('", SPLITS, "not a regular expression"),
    ('chat_format="messages", columns={"dialog": "x"}', COLUMNS,
     "'dialog' is not a column of chat_format='messages'; map some of messages"),
    ('chat_format="alpaca", prompt_template="{instruction}"', COLUMNS,
     "data is rendered with the tokenizer's chat template; remove prompt_template"),
    ('chat_format="alpaca", text="question"', COLUMNS, "map the columns of chat_format='alpaca' with data.columns"),
    ('chat_format="messages", files={"train": "a.jsonl"}', COLUMNS,
     "give data.name .a Hub dataset or a folder. or data.files"),
])
def test_bad_causal_recipes(tmp_path, llama, data, drop, message):
    path = write_recipe(tmp_path / "r.py", llama, data=data)
    path.write_text(path.read_text().replace(drop, ""))
    with pytest.raises(PeftlabError, match=message):
        load_recipe(path)


def test_causal_fields_refused_for_other_tasks(tmp_path, tiny_bert):
    from conftest import write_recipe as write_classification

    path = write_classification(tmp_path / "r.py", tiny_bert)
    path.write_text(path.read_text().replace("max_length=32", "max_length=32, packing=True"))
    with pytest.raises(PeftlabError, match="data.packing is for model.task='causal_lm'"):
        load_recipe(path)


def test_template_errors(llama):
    with pytest.raises(PeftlabError, match="names 'query', which is not a column"):
        _features(llama, sums(1, seed=0), prompt_template="{query}")
    tokenizer = make_chat_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(PeftlabError, match="no chat template; set data.prompt_template"):
        causal_lm.prompt_text(tokenizer, load_recipe_data(), {"question": "what is 1"})


# ------------------------------------------------------------------------------------------- chat formats

def conversations(n: int, seed: int) -> list[list[dict]]:
    """Sums as chat messages; every other conversation opens with a system turn and asks a follow-up sum after the
    first answer (two assistant turns)."""
    rows = sums(2 * n, seed)
    out = []
    for first, second in zip(rows[::2], rows[1::2]):
        turns = [{"role": "user", "content": first["question"]}, {"role": "assistant", "content": first["answer"]}]
        if len(out) % 2:
            turns = [{"role": "system", "content": "so what is the answer"}, *turns,
                     {"role": "user", "content": "and " + second["question"]},
                     {"role": "assistant", "content": second["answer"]}]
        out.append(turns)
    return out


def as_sharegpt(turns: list[dict]) -> dict:
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    return {"conversations": [{"from": names[t["role"]], "value": t["content"]} for t in turns]}


def _chat_features(rows: list[dict], **data):
    from datasets import Dataset

    from peftlab import Data, LoRA, Model, Recipe

    recipe = Recipe("t", Model("unused", task="causal_lm"), Data("x", **data), LoRA())
    tokenizer = make_chat_tokenizer()
    return tokenizer, causal_lm.prepare(Dataset.from_list(rows), tokenizer, recipe, [], "train")


def test_every_chat_format_reads_single_turns_as_the_prompt_response_form():
    rows = sums(4, seed=0)
    _, plain = _chat_features(rows, text="question", label="answer")
    turns = [[{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}] for r in rows]
    shaped = {"alpaca": [{"instruction": r["question"], "input": "", "output": r["answer"]} for r in rows],
              "sharegpt": [as_sharegpt(t) for t in turns],
              "messages": [{"messages": t} for t in turns]}
    for shape, shape_rows in shaped.items():
        _, features = _chat_features(shape_rows, chat_format=shape)
        assert list(features["input_ids"]) == list(plain["input_ids"]), shape
        assert list(features["labels"]) == list(plain["labels"]), shape
    # the recipe maps the data's own column names onto the shape's
    _, mapped = _chat_features(rows, chat_format="alpaca", columns={"instruction": "question", "output": "answer"})
    assert list(mapped["labels"]) == list(plain["labels"])
    _, renamed = _chat_features([{"dialog": t} for t in turns], chat_format="messages", columns={"messages": "dialog"})
    assert list(renamed["labels"]) == list(plain["labels"])


def test_alpaca_input_and_system_columns():
    from peftlab import Data, chat

    row = {"instruction": "add these", "input": "3 plus 4", "output": "7", "system": "be brief"}
    assert chat.messages(row, Data("x", chat_format="alpaca"), "row 0") == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "add these\n\n3 plus 4"},
        {"role": "assistant", "content": "7"}]


def test_multi_turn_labels_are_every_assistant_turn_token_by_token():
    """The tiny template opens a turn with '<|im_start|>{role}\\n' and closes it with '{content}<|im_end|>\\n'. The
    labels must be the assistant turns' content and end of turn, token for token, and -100 on everything else."""
    turns = conversations(2, seed=5)[1]
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user", "assistant"]
    tokenizer, features = _chat_features([{"messages": turns}], chat_format="messages", strip_regex=r"<<[^>]*>>")
    feature = features[0]
    stripped = [t | {"content": re.sub(r"<<[^>]*>>", "", t["content"])} if t["role"] == "assistant" else t
                for t in turns]
    expected_ids, expected_labels = [], []
    for turn in stripped:
        header = tokenizer(f"<|im_start|>{turn['role']}\n", add_special_tokens=False)["input_ids"]
        body = tokenizer(turn["content"] + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        expected_ids += header + body
        expected_labels += [-100] * len(header) + (body if turn["role"] == "assistant" else [-100] * len(body))
    assert feature["input_ids"] == expected_ids
    assert feature["labels"] == expected_labels
    rendered = tokenizer.apply_chat_template(stripped, tokenize=False)  # the whole conversation, tokenized at once
    assert tokenizer(rendered, add_special_tokens=False)["input_ids"] == feature["input_ids"]
    trained = [t for t in feature["labels"] if t != -100]
    assert trained.count(tokenizer.eos_token_id) == 2 and "<<" not in tokenizer.decode(trained)


def test_generation_answers_the_last_assistant_turn():
    from peftlab import Data

    turns = conversations(2, seed=5)[1]
    tokenizer = make_chat_tokenizer()
    prompt, question, reference = causal_lm.generation_case(tokenizer, Data("x", chat_format="sharegpt"),
                                                            as_sharegpt(turns), "row 0")
    assert prompt == tokenizer.apply_chat_template(turns[:-1], tokenize=False, add_generation_prompt=True)
    assert question == turns[3]["content"] and reference == turns[4]["content"]


@pytest.mark.parametrize("turns, message", [
    ([{"role": "user", "content": "what is 1"}], "train split, row 0: no assistant turn, nothing to train on"),
    ([{"role": "assistant", "content": "1"}, {"role": "user", "content": "what"}], "must start with a user turn"),
    ([{"role": "user", "content": "what is 1"}, {"role": "tool", "content": "1"}],
     "turn 2 has role 'tool'; use system, user .human. or assistant .gpt."),
    ([{"role": "user", "content": " "}, {"role": "assistant", "content": "1"}], "empty text in turn 1"),
])
def test_bad_conversations(turns, message):
    with pytest.raises(PeftlabError, match=message):
        _chat_features([{"messages": turns}], chat_format="messages")


def test_a_template_that_rewrites_earlier_turns_is_refused():
    from peftlab import chat

    tokenizer = make_chat_tokenizer()  # shortens earlier assistant turns, as templates that drop old reasoning do
    tokenizer.chat_template = CHAT_TEMPLATE.replace("{{ m['content'] }}", "{{ m['content'] if loop.last or "
                                                                          "m['role'] != 'assistant' else 'so' }}")
    with pytest.raises(PeftlabError, match="does not render the start of this conversation as the start of the whole"):
        chat.render(tokenizer, conversations(2, seed=5)[1], "row 1")


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chat")
    write_jsonl(root / "chats" / "train.jsonl", [as_sharegpt(t) for t in conversations(120, seed=1)])
    write_jsonl(root / "chats" / "test.jsonl", [as_sharegpt(t) for t in conversations(8, seed=2)])
    return root


def test_a_conversation_recipe_runs_end_to_end(tmp_path, llama, chat_dir, capsys):
    """ShareGPT files with multi-turn conversations: trained on every assistant turn, generation answers the last
    user turn, the files' md5s are recorded, and predict --eval re-scores the run from them."""
    from peftlab.data import md5

    path = write_recipe(tmp_path / "r.py", llama)
    path.write_text(path.read_text().replace(
        'Data("sums", text="question", label="answer", max_length=64',
        'Data(files={"train": "chats/train.jsonl", "test": "chats/test.jsonl"}, chat_format="sharegpt", max_length=96'))
    run = run_recipe(tmp_path, path, chat_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task_metrics"]["perplexity"] < 0.5 * metrics["before"]["perplexity"]
    test = conversations(8, seed=2)
    outputs = json.loads((run / "generations.json").read_text())["after"]
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    picked = [test[r["id"]] for r in records if r["kind"] == "generation"]  # ids: rows of the test file
    assert [o["question"] for o in outputs] == [t[-2]["content"] for t in picked]
    assert [o["reference"] for o in outputs] == [causal_lm.final_number(t[-1]["content"]) for t in picked]
    env = json.loads((run / "environment.json").read_text())
    assert env["data"]["files"] == {f"chats/{s}.jsonl": md5(chat_dir / "chats" / f"{s}.jsonl") for s in ("train", "test")}
    capsys.readouterr()
    assert predict.main([str(run), "--eval", "--data-dir", str(chat_dir)]) == 0
    rescored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval"]
    assert rescored["perplexity"] == pytest.approx(metrics["task_metrics"]["perplexity"], rel=1e-5)


# ------------------------------------------------------------------------------------------- comparison

@pytest.mark.slow  # six tiny runs, each its own process
def test_comparison_generates_only_where_asked_and_never_in_its_grid(tmp_path, llama, sums_dir, monkeypatch):
    """compare_gsm8k's shape on the tiny Llama: LoRA generates on seed 0 and full fine-tuning not at all
    (Comparison.generate, generate_seeds); LoRA's grid runs leave generation out and its chosen rate runs again on
    seed 0 with it. Perplexity is still pooled over both seeds and paired across the two; exact match is reported
    for LoRA's seed 0 alone, the base's once."""
    from peftlab import compare

    monkeypatch.setenv("PEFTLAB_DATA_DIR", str(sums_dir))
    for name, method in (("full", "FullFineTuning()"), ("lora", "LoRA(r=8, alpha=16, target='all-linear')")):
        path = write_recipe(tmp_path / f"{name}.py", llama, method=method, train="epochs=1, lr=1e-3, batch_size=8")
        path.write_text(path.read_text().replace('name="tiny_causal"', f"name={name!r}"))
    (tmp_path / "cmp.py").write_text(
        "from peftlab import Comparison\n"
        "comparison = Comparison(name='cmp', recipes=['full.py', 'lora.py'], baseline='full', seeds=[0, 1],\n"
        "                        bootstrap=200, lrs={'lora.py': [1e-3, 1e-2]}, generate=['lora.py'],\n"
        "                        generate_seeds=[0])\n")
    reports = tmp_path / "reports"
    assert compare.main([str(tmp_path / "cmp.py"), "--runs-dir", str(tmp_path / "runs"),
                         "--reports-dir", str(reports)]) == 0
    record = json.loads((reports / "cmp.json").read_text())
    chosen = record["lr_search"]["lora"]["chosen"]
    assert [(v["name"], v["seed"], v["lr"], v["search"], v["state"]) for v in record["variants"]] == [
        ("full", 0, None, False, "finished"), ("lora", 0, 1e-3, True, "finished"), ("lora", 0, 1e-2, True, "finished"),
        ("lora", 0, chosen, False, "finished"), ("full", 1, None, False, "finished"), ("lora", 1, chosen, False, "finished")]
    for v in record["variants"]:
        generated = "exact_match" in json.loads((Path(v["run"]) / "metrics.json").read_text())["task_metrics"]
        assert generated == (v["name"] == "lora" and not v["search"] and v["seed"] == 0), v
    results = record["results"]
    assert "exact_match" in results["lora"]["metrics"] and "exact_match" not in results["full"]["metrics"]
    assert set(results["lora"]["metrics"]["perplexity"]) >= {"ci95", "p_value"}  # paired against full anyway
    assert set(results["lora"]["lr_grid"]) == {"0.001", "0.01"}
    report = (reports / "cmp.md").read_text()
    assert "exact_match: scored for lora on seed 0 only" in report and "other variants ran without it" in report
    assert "lora ran the grid without generating" in report
    base_row = next(line for line in report.splitlines() if line.startswith("| base model |"))
    assert "full, lora" in base_row and "(6 prompts)" in base_row


# ------------------------------------------------------------------------------------------- newer methods

LORA_ALL = "r=8, alpha=16, dropout=0.0, target='all-linear'"
NEWER_METHODS = {  # what compare_gsm8k_more runs, on the tiny Llama: (method, recipe extra)
    "pissa": (f"LoRA({LORA_ALL}, init='pissa')", ""),
    "olora": (f"LoRA({LORA_ALL}, init='olora')", ""),
    "loftq": (f"LoRA({LORA_ALL}, init='loftq')", "quant=Quant4bit(),"),
    "loraplus": (f"LoRA({LORA_ALL}, loraplus_ratio=16)", ""),
    "rslora": (f"LoRA({LORA_ALL}, rslora=True)", ""),
    "vera": ("VeRA(r=32, target='all-linear')", ""),
    "adalora": ("AdaLoRA(init_r=8, target_r=4, alpha=16, target='all-linear')", ""),
    "oft": ("OFT(block_size=16, target='all-linear')", ""),
    "boft": ("BOFT(block_size=8, butterfly_factors=1, target='all-linear')", ""),
}


@pytest.mark.slow  # a tiny run per method
@pytest.mark.parametrize("name", NEWER_METHODS)
def test_newer_methods_train_generate_and_reload_on_a_causal_lm(tmp_path, llama, sums_dir, capsys, name):
    """Each method beyond LoRA that compare_gsm8k_more runs, through the real CLI on a causal LM: it learns the
    sums (perplexity below the base's), generates, and its saved adapter reloads to the same perplexity."""
    method, extra = NEWER_METHODS[name]
    run = run_recipe(tmp_path, write_recipe(tmp_path / "r.py", llama, method=method, extra=extra), sums_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task_metrics"]["perplexity"] < metrics["before"]["perplexity"]
    assert metrics["generation"]["new_tokens_after"] > 0
    capsys.readouterr()
    assert predict.main([str(run), "--eval", "--data-dir", str(sums_dir)]) == 0
    rescored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval"]
    assert rescored["perplexity"] == pytest.approx(metrics["task_metrics"]["perplexity"], rel=1e-5)

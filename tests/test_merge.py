"""Merge/export on tiny BERTs: exact for LoRA, real-but-reported for a 4-bit base, refused where wrong."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peftlab import artifacts, export, merge, predict

from conftest import make_bert, run_recipe, write_recipe

TRAIN = "epochs=3, lr=1e-2, batch_size=16, logging_steps=8"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert, data_dir):
    tmp = tmp_path_factory.mktemp("merge-lora")
    recipe = write_recipe(tmp / "r.py", tiny_bert, method="LoRA(r=4, target='all-linear', modules_to_save=['LayerNorm'])", train=TRAIN)
    return run_recipe(tmp, recipe, data_dir)


def _export(run_dir: Path, out: Path, data_dir: Path, *extra: str) -> dict:
    assert merge.main([str(run_dir), "--out", str(out), "--data-dir", str(data_dir), *extra]) == 0
    return json.loads((out / artifacts.EXPORT_RECORD).read_text())


def test_lora_merge_is_exact_and_loads_without_peft(lora_run, data_dir, tmp_path):
    out = tmp_path / "export"
    record = _export(lora_run, out, data_dir)
    assert record["verification"]["max_abs_logit_diff"] <= 1e-5
    assert record["verification"]["label_agreement"] == 1.0
    run_metrics = json.loads((lora_run / "metrics.json").read_text())["task_metrics"]
    assert record["export_metrics"]["accuracy"] == pytest.approx(run_metrics["accuracy"])
    # a fresh process with plain transformers, peft not even importable
    code = ("import sys; sys.modules['peft'] = None\n"
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
            f"m = AutoModelForSequenceClassification.from_pretrained({str(out)!r})\n"
            f"t = AutoTokenizer.from_pretrained({str(out)!r})\n"
            "print(m.config.id2label[int(m(**t(['a great lovely film'], return_tensors='pt')).logits.argmax())])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip().splitlines()[-1] in ("positive", "negative")
    from safetensors.torch import load_file

    keys = load_file(out / "model.safetensors").keys()
    assert not export.peft_keys(keys) and "classifier.weight" in keys
    card = (out / "README.md").read_text()
    assert "max_abs_logit_diff" not in card and f"{record['verification']['max_abs_logit_diff']:.3g}" in card
    versions = record["environment"]["versions"]
    assert f"torch {versions['torch']}" in card and f"peft {versions['peft']}" in card  # what made it


def test_head_survives_the_merge(lora_run, data_dir, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "export"
    _export(lora_run, out, data_dir)
    adapter = load_file(lora_run / "adapter" / "adapter_model.safetensors")
    trained_head = next(v for k, v in adapter.items() if "classifier" in k and k.endswith("weight"))
    assert torch.equal(load_file(out / "model.safetensors")["classifier.weight"], trained_head)


def test_dtype_option(lora_run, data_dir, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "bf16"
    record = _export(lora_run, out, data_dir, "--dtype", "bfloat16")
    with safe_open(out / "model.safetensors", "pt") as fh:
        assert fh.get_tensor("classifier.weight").dtype == torch.bfloat16
    assert 0 < record["verification"]["max_abs_logit_diff"] < 0.1  # rounding to bf16 is measured, not hidden


def test_predict_accepts_an_export(lora_run, data_dir, tmp_path, capsys):
    out = tmp_path / "export"
    record = _export(lora_run, out, data_dir)
    capsys.readouterr()
    assert predict.main([str(out), "--eval", "--data-dir", str(data_dir)]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval"]
    assert scored["accuracy"] == pytest.approx(record["export_metrics"]["accuracy"])


def test_merge_refuses_existing_out_and_other_base(lora_run, data_dir, tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    assert merge.main([str(lora_run), "--out", str(out), "--data-dir", str(data_dir)]) == 2
    assert "already exists" in capsys.readouterr().err
    copy = tmp_path / "run-on-other-base"
    shutil.copytree(lora_run, copy)
    recipe = json.loads((copy / "recipe.json").read_text())
    recipe["model"]["name"] = str(make_bert(tmp_path / "other", seed=9))
    (copy / "recipe.json").write_text(json.dumps(recipe))
    assert merge.main([str(copy), "--out", str(tmp_path / "x"), "--data-dir", str(data_dir)]) == 2
    assert "trained on base weights sha256" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.tmp-*"))


def test_non_mergeable_method_is_refused(tmp_path, tiny_bert, data_dir, capsys):
    recipe = write_recipe(tmp_path / "r.py", tiny_bert, method="PromptTuning(num_virtual_tokens=4)",
                          train="max_steps=2, batch_size=16")
    run_dir = run_recipe(tmp_path, recipe, data_dir)
    assert merge.main([str(run_dir), "--out", str(tmp_path / "x"), "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "PromptTuning adapters cannot be merged" in err and "peftlab.predict" in err
    assert not (tmp_path / "x").exists()


def quantized_run(tmp: Path, data_dir: Path, quant: str) -> Path:
    recipe = write_recipe(tmp / "r.py", make_bert(tmp / "bert64", hidden=64), method="LoRA(r=4, target='all-linear')",
                          train="max_steps=6, lr=1e-2, batch_size=16", extra=f"quant={quant},")
    return run_recipe(tmp, recipe, data_dir)


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, data_dir):
    return quantized_run(tmp_path_factory.mktemp("merge-qlora"), data_dir, "Quant4bit()")


def test_qlora_merge_goes_into_full_precision_base(qlora_run, data_dir, tmp_path):
    record = _export(qlora_run, tmp_path / "export", data_dir)
    assert record["trained_on_quantized_base"] and record["base"] == "original"
    # NF4 rounding of the base is gone in the export: a real, reported difference, not zero and not huge
    assert 1e-6 < record["verification"]["max_abs_logit_diff"] < 1.0
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "export" / "model.safetensors")
    assert weights["bert.encoder.layer.0.attention.self.query.weight"].dtype == torch.float32
    assert "quantized" in (tmp_path / "export" / "README.md").read_text()
    # the merge into the de-quantized base was built and measured too, so the card can offer the choice
    assert set(record["bases"]) == {"original", "dequantized"} and record["bases"]["original"] == {
        "verification": record["verification"], "export_metrics": record["export_metrics"]}
    assert "--base dequantized" in (tmp_path / "export" / "README.md").read_text()


def _differences(record: dict) -> tuple[float, float]:
    return tuple(record["bases"][b]["verification"]["max_abs_logit_diff"] for b in ("dequantized", "original"))


def test_dequantized_merge_reproduces_the_model_as_trained(qlora_run, data_dir, tmp_path):
    """The adapter learned on NF4-rounded weights: folded into those weights de-quantized, the export is the model
    as trained (float rounding apart), unlike the merge into the original weights; plain transformers loads it."""
    out = tmp_path / "dequantized"
    record = _export(qlora_run, out, data_dir, "--base", "dequantized")
    dequantized, original = _differences(record)
    assert record["base"] == "dequantized" and record["verification"]["max_abs_logit_diff"] == dequantized
    assert dequantized < 1e-5 < original
    card = (out / "README.md").read_text()
    assert f"| dequantized (this folder) | {dequantized:.3g} |" in card and f"| original | {original:.3g} |" in card
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    # a fresh process with plain transformers (peft not importable) gives the logits of the adapter on the 4-bit base
    texts = ["a great lovely film", "the plot was dull and the acting a boring mess"]
    code = ("import json, sys; sys.modules['peft'] = None\n"
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
            f"m = AutoModelForSequenceClassification.from_pretrained({str(out)!r}).eval()\n"
            f"t = AutoTokenizer.from_pretrained({str(out)!r})\n"
            f"print(json.dumps(m(**t({texts!r}, padding=True, return_tensors='pt')).logits.tolist()))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
    trained = artifacts.load_trained(qlora_run)
    with torch.no_grad():
        expected = trained.model(**trained.tokenizer(texts, padding=True, return_tensors="pt")).logits
    assert torch.allclose(torch.tensor(json.loads(done.stdout.strip().splitlines()[-1])), expected, atol=1e-5)


@pytest.mark.slow
def test_dequantized_merge_of_an_8bit_run(tmp_path, data_dir):
    """LLM.int8 quantizes activations too, so no float export reproduces it exactly; the de-quantized weights still
    leave out the weights' rounding, the part of the difference a merge can remove."""
    run_dir = quantized_run(tmp_path, data_dir, "Quant8bit()")
    record = _export(run_dir, tmp_path / "export", data_dir, "--base", "dequantized")
    dequantized, original = _differences(record)
    assert 0 < dequantized < original
    assert record["bases"]["dequantized"]["verification"]["label_agreement"] == 1.0


def test_verification_covers_random_and_the_longest_examples(lora_run, data_dir, tmp_path):
    """Evaluation features come sorted by length: the first N are the shortest, where position-dependent
    differences show least. The check takes the longest N/2 and N/2 at random."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lora_run / "tokenizer")
    sentences = [row.split("\t")[0] for row in (data_dir / "sst2" / "validation.tsv").read_text().splitlines()[1:]]
    lengths = sorted(len(tokenizer(s)["input_ids"]) for s in sentences)
    verification = _export(lora_run, tmp_path / "export", data_dir, "--compare", "8")["verification"]
    assert verification["compared_examples"] == 8
    assert verification["longest_compared_tokens"] == lengths[-1] > lengths[7]


def test_regression_is_verified_by_its_score(tmp_path, tiny_bert):
    """One output per example: 'label agreement' (argmax over one column) would be 100 % whatever the scores."""
    from conftest import sentiment_rows, write_tsv

    data = tmp_path / "data"
    for split, n, seed in (("train", 64, 1), ("validation", 16, 2)):
        write_tsv(data / "sst2" / f"{split}.tsv", [(t, float(v)) for t, v in sentiment_rows(n, seed)],
                  header=("sentence", "score"))
    recipe = write_recipe(tmp_path / "r.py", tiny_bert, method="LoRA(r=4, target='all-linear')",
                          train="epochs=1, lr=1e-2, batch_size=16")
    recipe.write_text(recipe.read_text().replace('task="classification", labels=["negative", "positive"]',
                                                 'task="regression"').replace('label="label"', 'label="score"'))
    run_dir = run_recipe(tmp_path, recipe, data)
    record = _export(run_dir, tmp_path / "export", data, "--dtype", "bfloat16")
    verification = record["verification"]
    assert "label_agreement" not in verification
    assert 0 < verification["max_abs_score_diff"] < 0.1  # bf16 rounding of the score, measured
    assert "score" in (tmp_path / "export" / "README.md").read_text()


def test_an_adapter_with_nan_weights_is_not_merged(lora_run, data_dir, tmp_path, capsys):
    """peft's safe_merge checks the merged weights for NaN before they replace the base's."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "run"
    shutil.copytree(lora_run, copy)
    weights = load_file(copy / "adapter" / "adapter_model.safetensors")
    key = next(k for k in weights if "lora_B" in k)
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, copy / "adapter" / "adapter_model.safetensors", metadata={"format": "pt"})
    capsys.readouterr()
    assert merge.main([str(copy), "--out", str(tmp_path / "x"), "--data-dir", str(data_dir)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "NaN" in errors[0], errors
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.tmp-*"))


@pytest.mark.parametrize("head", ["token", "qa"])
def test_verification_leaves_padded_positions_out(head):
    """Token, causal-LM and QA heads give outputs at padded positions too: they mean nothing (and may differ between
    the two models, as here), so only real positions are compared."""
    from types import SimpleNamespace

    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    from peftlab.export import compare_logits

    from conftest import make_tokenizer

    tokenizer = make_tokenizer()
    examples = Dataset.from_list([dict(tokenizer(text)) for text in ("a good film", "the plot was very dull and bad")])
    task = SimpleNamespace(collator=lambda tok: DataCollatorWithPadding(tok))

    def model(noise_at_padding: float):
        def forward(input_ids, attention_mask, **kwargs):
            logits = torch.nn.functional.one_hot(input_ids, 40).float()
            logits[..., 0] += noise_at_padding * (1 - attention_mask)
            if head == "token":
                return SimpleNamespace(logits=logits)
            return SimpleNamespace(logits=None, start_logits=logits[..., 5], end_logits=logits[..., 5] - logits[..., 0])
        return forward

    verification = compare_logits(model(0.0), model(100.0), tokenizer, task, examples)
    assert verification["max_abs_logit_diff"] == 0 and verification["label_agreement"] == 1.0

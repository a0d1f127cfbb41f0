"""The run directory: one per run, every file written atomically, with a status a reader can trust.

runs/<recipe>-<timestamp>/
  status.json       {"state": "running" | "finished" | "failed" | "interrupted", "error": ...}
  recipe.json       the resolved recipe (overrides applied); recipe.py is the source as given
  environment.json  versions, hardware, seed, data hashes, model source and fingerprint, command
  metrics.json      task metrics, parameter counts, time, throughput, peak memory
  log_history.json  Trainer's log (loss curve, evaluations)
  adapter/ | model/ the trained weights (standard peft format, or a full model); tokenizer/
  report.md
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .errors import PeftlabError, check

FINISHED = "finished"


def write_atomic(path: Path, text: str) -> None:
    """Write beside the target, then rename: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def create(root: Path, name: str) -> Path:
    try:
        root.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = root / f"{name}-{stamp}"
        suffix = 1
        while path.exists():
            path, suffix = root / f"{name}-{stamp}-{suffix}", suffix + 1
        path.mkdir()
    except OSError as err:
        raise PeftlabError(f"cannot create a run directory in {root} ({err.strerror}); "
                           "use --runs-dir with a writable folder") from None
    set_status(path, "running")
    return path


def set_status(path: Path, state: str, error: str | None = None) -> None:
    write_json(path / "status.json", {"state": state, "error": error, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})


def status(path: Path) -> str:
    try:
        return read_json(Path(path) / "status.json")["state"]
    except (OSError, ValueError, KeyError):
        return "unknown"


def require_finished(path: Path) -> Path:
    path = Path(path)
    check(path.is_dir(), f"run directory {path} does not exist: pass a runs/<recipe>-<timestamp> folder")
    state = status(path)
    check(state == FINISHED, f"run {path} is '{state}', not finished: rerun it (or resume it) first")
    return path


def remove_checkpoints(path: Path) -> None:
    shutil.rmtree(path / "checkpoints", ignore_errors=True)

"""The run directory: one per run, every file written atomically, with a status a reader can trust.

runs/<recipe>-<timestamp>/
  status.json       {"state": "running" | "finished" | "failed" | "interrupted", "error": ..., "pid", "host"}
                    a "running" run whose process is gone (SIGKILL, power loss) reads as "interrupted"
  checkpoints/      Trainer checkpoints while training (removed once finished); `--resume` continues from them
  recipe.json       the resolved recipe (overrides applied); recipe.py is the source as given
  environment.json  versions, hardware, seed, data hashes, model source and fingerprint, command
  metrics.json      task metrics, parameter counts, time, throughput, peak memory
  log_history.json  Trainer's log (loss curve, evaluations on the selection split)
  predictions.jsonl one record per example of the reported split, scored once after training (tasks/__init__.py);
                    predictions_test.jsonl likewise for a labelled test split (data.test_split)
  adapter/ | model/ the trained weights (standard peft format, or a full model); tokenizer/
  report.md, training_curve.png
  tensorboard/      TensorBoard event files, when Trainer reported to TensorBoard (peftlab/tracking.py)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from .errors import PeftlabError, check

FINISHED = "finished"
PREDICTIONS = {"reported": "predictions.jsonl", "test": "predictions_test.jsonl"}
TENSORBOARD = "tensorboard"


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
    """A record peftlab wrote (or a file in its place): missing, truncated or garbled, it is one line naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PeftlabError(f"{path} is missing: the folder is incomplete; restore the file from a copy or rerun "
                           "what wrote it") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise PeftlabError(f"{path}: not readable JSON ({str(err)[:100]}); restore the file from a copy or rerun "
                           "what wrote it") from None


def write_jsonl(path: Path, records: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, default=str) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


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
    record = {"state": state, "error": error, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if state == "running":  # who runs it, so a reader can tell a live run from one whose process died
        record |= {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid())}
    write_json(path / "status.json", record)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (Linux); [0] is the state, [19] the start time."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_start(pid: int) -> str | None:
    """Start time in clock ticks since boot: tells the run's process from a later one that reuses its pid."""
    fields = _proc_stat(pid)
    return fields[19] if fields else None


def _process_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    fields = _proc_stat(pid)
    if fields is None:
        return True  # no /proc: the signal test above is all we have
    return fields[0] != "Z" and (start is None or fields[19] == start)  # a zombie or a reused pid is not the run


def read_status(path: Path) -> dict:
    """status.json as a reader should see it: "running" on this host with its process gone is "interrupted"."""
    try:
        record = read_json(Path(path) / "status.json")
        record["state"]
    except (PeftlabError, OSError, KeyError, TypeError):
        return {"state": "unknown", "error": "no readable status.json"}
    if (record["state"] == "running" and record.get("host") == socket.gethostname() and record.get("pid")
            and not _process_alive(record["pid"], record.get("process_start"))):
        record |= {"state": "interrupted",
                   "error": f"process {record['pid']} ended without finishing the run (killed?)"}
    return record


def status(path: Path) -> str:
    return read_status(path)["state"]


def require_finished(path: Path) -> Path:
    path = Path(path)
    check(path.is_dir(), f"run directory {path} does not exist: pass a runs/<recipe>-<timestamp> folder")
    state = status(path)
    check(state == FINISHED, f"run {path} is '{state}', not finished: rerun it (or resume it) first")
    return path


def remove_checkpoints(path: Path) -> None:
    shutil.rmtree(path / "checkpoints", ignore_errors=True)

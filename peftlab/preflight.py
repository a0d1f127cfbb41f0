"""Checks run before a run directory exists, none of which loads a model or reads a whole dataset: a run that
cannot start stops within seconds, with one line, and leaves nothing behind. Also the translation of storage
failures during a run (disk full, read-only) into one line."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from . import models, tracking
from .errors import check

WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")


def check_device(recipe) -> None:
    import torch

    check(recipe.train.device != "cuda" or torch.cuda.is_available(),
          f"train.device='cuda' but torch {torch.__version__} sees no CUDA GPU "
          f"({'a CPU-only build' if torch.version.cuda is None else 'no visible device'}); "
          "use --set train.device=auto (or cpu), or run on a machine with a GPU")


def check_model(recipe) -> None:
    """The model can be found (local folder, Hub, packaged copy) and a local folder holds weights."""
    resolved = models.resolve(recipe.model.name, recipe.model.revision)
    if resolved.source == "local":
        folder = Path(resolved.path)
        check(any(next(folder.glob(pattern), None) for pattern in WEIGHT_FILES),
              f"model folder {folder} has a config.json but no weights (*.safetensors or pytorch_model.bin): "
              "point Model(name=...) at a complete saved model")


def check_writable(path: Path, option: str) -> None:
    """The folder, or the nearest folder above it that exists, accepts new files. Nothing is created."""
    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    check(existing.is_dir(), f"{option} {path}: {existing} is a file, not a folder; pass a writable folder")
    check(os.access(existing, os.W_OK | os.X_OK), f"{option} {path}: {existing} is not writable "
                                                  f"(permissions or a read-only disk); pass a writable folder")


def run_checks(recipe, runs_dir: Path, reports_dir: Path | None) -> None:
    check_device(recipe)
    tracking.check_installed(recipe.train.report_to)
    check_model(recipe)
    check_writable(runs_dir, "--runs-dir")
    if reports_dir is not None:
        check_writable(reports_dir, "--reports-dir")


STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied"}
# Writers that report a failed write without an errno (torch.save, safetensors) say so in these words.
STORAGE_WORDS = ("No space left on device", "Disk quota exceeded", "file write failed", "StorageFull")


def storage_problem(err: BaseException, run_dir: Path | None) -> str | None:
    """One line for a failed write (disk full, quota, read-only, permissions), else None."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            reason, where = STORAGE_ERRNOS[seen.errno], seen.filename
            break
        if any(words in str(seen) for words in STORAGE_WORDS):
            reason, where = "a write failed (disk full?)", None
            break
        seen = seen.__cause__ or seen.__context__
    else:
        return None
    free = ""
    if run_dir is not None and run_dir.exists():
        free = f", {shutil.disk_usage(run_dir).free / 2**20:.0f} MiB free there"
    return (f"cannot write {where or run_dir or 'the output'}: {reason}{free}; free some space or make it "
            "writable (or use --runs-dir on another disk), then resume the run")

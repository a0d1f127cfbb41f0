"""python -m peftlab.run RECIPE --resume [RUN_DIR]: continue an interrupted or failed run in its own directory,
from its last complete checkpoint (peftlab.checkpoints), and finish it there.

Without RUN_DIR, the newest interrupted or failed run of the recipe in --runs-dir. A run is refused when it
finished, when its process still runs, or when what it trains differs: the recipe (after --set overrides),
the data files or the base weights. Only how it is checkpointed and logged may change.
"""

from __future__ import annotations

import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from . import checkpoints, models, rundir
from .errors import check

AUTO = "auto"  # --resume without a directory
RESUMABLE = ("interrupted", "failed")
# what changes how a run is checkpointed, logged or tracked, not what it trains
MAY_DIFFER = {"train.checkpoint_steps", "train.keep_checkpoints", "train.logging_steps", "train.report_to"}


@dataclass(frozen=True)
class Resume:
    run_dir: Path
    checkpoint: Path | None  # None: interrupted before its first checkpoint, trains from step 0 again

    @property
    def step(self) -> int:
        return int(self.checkpoint.name.rsplit("-", 1)[1]) if self.checkpoint else 0

    def __str__(self) -> str:
        return f"resuming from {self.checkpoint.name}" if self.checkpoint else "resuming: no checkpoint yet, from step 0"


def _find(arg: str, runs_dir: Path, name: str) -> Path:
    if arg != AUTO:
        path = Path(arg)
        check((path / "status.json").is_file(), f"--resume {arg}: not a run directory (no status.json); "
                                                f"pass a {runs_dir}/<recipe>-<timestamp> folder")
        return path
    runs = sorted(p for p in (runs_dir.glob(f"{name}-*") if runs_dir.is_dir() else [])
                  if (p / "recipe.json").is_file() and rundir.status(p) in RESUMABLE
                  and rundir.read_json(p / "recipe.json").get("name") == name)
    check(bool(runs), f"--resume: no interrupted or failed run of {name} in {runs_dir}; "
                      "start a new run without --resume, or pass the run directory")
    return runs[-1]


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        out |= _flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def recipe_differences(run_dir: Path, recipe) -> list[str]:
    """Fields that would train something else than the run did, as 'field: recorded -> now'."""
    from .recipe import recipe_from_dict, recipe_to_dict

    recorded = _flatten(recipe_to_dict(recipe_from_dict(rundir.read_json(run_dir / "recipe.json"))))
    current = _flatten(recipe_to_dict(recipe))
    return [f"{key}: {recorded.get(key)!r} -> {current.get(key)!r}" for key in sorted(recorded.keys() | current.keys())
            if key not in MAY_DIFFER and recorded.get(key) != current.get(key)]


def input_differences(run_dir: Path, recipe, data_root: Path | None) -> list[str]:
    """Local data files and base weights whose hashes differ from those the run recorded."""
    from . import data as data_stage

    if not (run_dir / "environment.json").is_file():
        return []  # stopped before it read its inputs: nothing to compare
    env = rundir.read_json(run_dir / "environment.json")
    changed = [f"data file {change}" for change in data_stage.changed_files(
        recipe.data, data_root, env["data"].get("files", {}))]
    recorded = env["model"].get("fingerprint")
    current = models.weights_fingerprint(models.resolve(recipe.model.name, recipe.model.revision))
    if recorded and current and recorded != current:
        changed.append(f"base weights (sha256 {current[:12]}…, run used {recorded[:12]}…)")
    return changed


def prepare(arg: str, runs_dir: Path, recipe, data_root: Path | None) -> Resume:
    """Everything is checked before the run directory is touched; then it is marked running again."""
    run_dir = _find(arg, runs_dir, recipe.name)
    status = rundir.read_status(run_dir)
    state = status["state"]
    check(state != rundir.FINISHED, f"run {run_dir} already finished: nothing to resume; start a new run "
                                    "without --resume")
    check(state != "running", f"run {run_dir} is still running (pid {status.get('pid')} on {status.get('host')}): "
                              "stop it first (Ctrl-C saves a checkpoint), then resume")
    check(state in RESUMABLE and (run_dir / "recipe.json").is_file(),
          f"run {run_dir} is '{state}' and cannot be resumed; start a new run without --resume")
    differ = recipe_differences(run_dir, recipe)
    original = _original_command(run_dir)
    check(not differ, f"--resume {run_dir}: the recipe differs from the run's ({'; '.join(differ)}); resume with "
                      f"the recipe and --set options the run started with{': ' + original if original else ''}")
    changed = input_differences(run_dir, recipe, data_root)
    check(not changed, f"--resume {run_dir}: {'; '.join(changed)} changed since the run started; restore them "
                       "or start a new run without --resume")
    checkpoint = checkpoints.prepare_resume(run_dir / "checkpoints", _processes(run_dir))
    rundir.set_status(run_dir, "running")
    return Resume(run_dir, checkpoint)


def _processes(run_dir: Path) -> int | None:
    """How many processes wrote the run's checkpoints (None: not recorded, as many as now)."""
    path = run_dir / "environment.json"
    return rundir.read_json(path).get("processes") if path.is_file() else None


def _original_command(run_dir: Path) -> str | None:
    path = run_dir / "environment.json"
    return rundir.read_json(path).get("command") if path.is_file() else None


def environment(resume: Resume, env: dict) -> dict:
    """The run's first environment record, with this resumption appended (the report shows both)."""
    path = resume.run_dir / "environment.json"
    if not path.is_file():
        return env
    recorded = rundir.read_json(path)
    entry = {"command": env["command"], "from_step": resume.step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "host": socket.gethostname()}
    for key in ("versions", "report_to"):  # what this process ran with, where it differs from the first
        if env.get(key) != recorded.get(key):
            entry[key] = env.get(key)
    recorded.setdefault("resumed", []).append(entry)
    return recorded


def command_line(argv: list[str], resume_arg: str | None, run_dir: Path, module: str = "peftlab.run") -> str:
    """The command that resumes run_dir: this one (`python -m module argv`), with --resume pointing at it."""
    parts, skip = [], False
    for i, token in enumerate(argv):
        if skip:
            skip = False
            continue
        if token.startswith("--resume="):
            continue
        if token == "--resume":
            skip = resume_arg not in (None, AUTO) and i + 1 < len(argv) and argv[i + 1] == resume_arg
            continue
        parts.append(token)
    return shlex.join(["python", "-m", module, *parts, "--resume", str(run_dir)])

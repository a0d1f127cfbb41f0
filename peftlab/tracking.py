"""Experiment tracking through transformers' own integrations (TrainingArguments.report_to): TensorBoard by default
when it is installed, W&B, MLflow and the others transformers knows by name. TensorBoard writes into the run
directory (tensorboard/), so the event files stay with the run. The other trackers keep their own stores and read
their own settings (WANDB_MODE=offline, WANDB_DIR, MLFLOW_TRACKING_URI, ...): nothing here turns a network on."""

from __future__ import annotations

import difflib
from pathlib import Path

from transformers.integrations import (
    INTEGRATION_TO_CALLBACK,
    TensorBoardCallback,
    get_available_reporting_integrations,
    is_tensorboard_available,
)

from .errors import check
from .rundir import TENSORBOARD

AUTO = "auto"  # TensorBoard when it is installed, else nothing
PIP_NAMES = {"tensorboard": "tensorboard (or pip install -e '.[tensorboard]')", "azure_ml": "azureml-core"}


def trackers(report_to) -> list[str]:
    """The tracker names a recipe's train.report_to stands for, as TrainingArguments takes them."""
    if report_to == AUTO:
        return ["tensorboard"] if is_tensorboard_available() else []
    return list(report_to)


def check_names(report_to, where: str) -> None:
    """Each name is one transformers knows (the recipe's check: no tracker has to be installed for it)."""
    if report_to == AUTO:
        return
    known = sorted(INTEGRATION_TO_CALLBACK)
    for name in report_to:
        hint = difflib.get_close_matches(name, known, n=1)
        check(name in INTEGRATION_TO_CALLBACK,
              f"{where}.report_to: unknown tracker {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
              + f"; use 'auto', [] for none, or names from: {', '.join(known)}")
    check(len(set(report_to)) == len(report_to), f"{where}.report_to={report_to}: a tracker is named twice")


def check_installed(report_to) -> None:
    """Before a run directory exists: every tracker asked for by name can be used here (Trainer would fail later)."""
    available = get_available_reporting_integrations()  # what transformers' report_to="all" would use
    for name in trackers(report_to):
        check(name in available, f"train.report_to: {name} is not installed here (usable: "
                                 f"{', '.join(available) or 'none'}); pip install {PIP_NAMES.get(name, name)}, or "
                                 f"leave it out of train.report_to")


class RunDirTensorBoard(TensorBoardCallback):
    """Trainer's TensorBoard logging, into the run directory: transformers 5 has no TrainingArguments.logging_dir,
    and its default (output_dir/runs/...) lies in checkpoints/, which a finished run removes. Like the callback it
    replaces, it writes on the main process only."""

    def __init__(self, log_dir: Path):
        super().__init__()
        self.logging_dir = str(log_dir)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.tb_writer is None and state.global_step > 0:
            # resumed: TensorBoard drops what the stopped process logged after the checkpoint, so no curve runs
            # twice over those steps (_SummaryWriter: the writer class the callback chose, torch's or tensorboardX)
            self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir, purge_step=state.global_step + 1)
        super().on_train_begin(args, state, control, **kwargs)


def log_into(trainer, run_dir: Path) -> None:
    """Point the trainer's TensorBoard logging (when report_to has it) at run_dir/tensorboard."""
    if trainer.pop_callback(TensorBoardCallback) is not None:
        trainer.add_callback(RunDirTensorBoard(run_dir / TENSORBOARD))

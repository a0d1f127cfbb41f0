"""python -m peftlab.run RECIPE [--set a.b=value ...] — one run, end to end:
recipe -> data -> model (+ quantization) -> method -> train -> evaluate -> save -> report (peftlab/pipeline.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console

from . import data as data_stage
from . import pipeline, plan, resume


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m peftlab.run", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path, help="a recipes/*.py file defining `recipe = Recipe(...)`")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="a.b=value",
                        help="override a recipe field, e.g. --set train.epochs=2 --set method.r=16")
    parser.add_argument("--data-dir", default=None,
                        help=f"local data folder (default: ${data_stage.DATA_DIR_ENV}; unset: the Hub)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run directories go")
    parser.add_argument("--reports-dir", default="reports",
                        help="where the report and metrics are copied ('' to skip)")
    parser.add_argument("--plan", action="store_true", help="predict peak memory, say whether it fits, and exit")
    parser.add_argument("--budget", type=plan.parse_size, default=None,
                        help="memory budget, e.g. 2GiB: a run chooses micro-batch and gradient checkpointing so the "
                             "predicted training peak fits (stops if nothing fits); with --plan, whether the recipe as "
                             "written fits (default: GPU memory, else physical memory)")
    parser.add_argument("--base-cache", type=Path, default=None, metavar="DIR",
                        help="causal LM: keep the base model's before-training figures here and reuse them in runs of "
                             "the same base, data and evaluation settings (compare sets it for its variants)")
    parser.add_argument("--resume", nargs="?", const=resume.AUTO, default=None, metavar="RUN_DIR",
                        help="continue an interrupted or failed run from its last checkpoint (default: the newest "
                             "one of this recipe in --runs-dir); give the same recipe and --set options")
    args = parser.parse_args(argv)
    pipeline.quiet_libraries()
    console = Console(stderr=True, soft_wrap=True)  # soft wrap: an error stays one line
    return pipeline.run(pipeline.Options(**vars(args)), argv, console)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

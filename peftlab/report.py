"""python -m peftlab.report RUN_DIR ... [--out reports/] — rebuild runs' reports from their records, without
training (peftlab/run_report.py renders them)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import cli_exit_code
from .run_report import write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftlab.report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    parser.add_argument("--out", type=Path, default=None, help="also copy reports here (e.g. reports/)")
    args = parser.parse_args(argv)

    def write_all() -> None:
        for run in args.runs:
            print(write(run, args.out))

    return cli_exit_code(write_all)


if __name__ == "__main__":
    sys.exit(main())

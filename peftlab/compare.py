"""python -m peftlab.compare recipes/compare_sst2.py — run several methods on the same task, one report.

Each variant (× seed) runs as its own `python -m peftlab.run` subprocess (peftlab/comparison.py). The report is built
only from the run records on disk; `python -m peftlab.compare --report-only runs/compare_sst2-<stamp>` rebuilds it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from . import comparison_records, comparison_report
from .comparison import Comparison, run_all  # noqa: F401 — Comparison: older comparison files import it from here
from .errors import PeftlabError
from .plan import parse_size


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m peftlab.compare", description=__doc__.splitlines()[0])
    parser.add_argument("comparison", type=Path, help="a recipes/compare_*.py file, or with --report-only a "
                                                      "comparison directory or its kept records")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from recorded runs")
    parser.add_argument("--resume", type=Path, default=None, metavar="DIR",
                        help="continue a comparison that stopped part-way or gained recipes or seeds "
                             "(runs/<comparison>-<timestamp>, or its records in reports/<comparison>/records): its "
                             "finished runs are kept, the rest run")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--reports-dir", type=Path, default=Path("reports"))
    parser.add_argument("--budget", type=parse_size, default=None,
                        help="memory budget passed to every variant's run (e.g. 2GiB); a variant that cannot fit is "
                             "shown as 'does not fit (plan: X)'")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="run these seeds instead of the file's")
    parser.add_argument("--recipe-lrs", action="store_true",
                        help="each recipe's own learning rate instead of the file's grid (lrs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="a.b=value",
                        help="override a recipe field in every variant, after the file's overrides")
    args = parser.parse_args(argv)
    console = Console(stderr=True, soft_wrap=True)
    try:
        if args.report_only:
            record = comparison_records.load(args.comparison)
        else:
            record = run_all(args, argv, console)
        path = comparison_report.write(record, args.reports_dir)
        console.print(f"report: {path}")
        return 0
    except PeftlabError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C: the runs finished so far are kept
        console.print(f"interrupted{'; ' + str(err) if str(err) else ''}", highlight=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())

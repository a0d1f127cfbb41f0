"""Load test of the model server: throughput, latency percentiles, errors and the server's peak RSS, batching on vs
off, one adapter vs K (peftlab/load_test.py says how).

    python benchmarks/serve_load.py RUN [--adapters K | --with RUN2 ...] [--clients N] [--requests M] [--duration S]
                                        [--out DIR]

Writes DIR/serve_load.md and DIR/serve_load.json (default DIR: reports/serve_load).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's peftlab, whatever is installed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run directory")
    parser.add_argument("--adapters", type=int, default=4,
                        help="K: adapters in the multi-adapter scenario (the run's own, loaded K times)")
    parser.add_argument("--with", dest="others", type=Path, action="append", default=[], metavar="RUN2",
                        help="another run of the same base whose adapter joins in the multi-adapter scenario "
                             "(repeatable; replaces --adapters)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=400, help="most requests per scenario")
    parser.add_argument("--duration", type=float, default=60, help="most seconds per scenario")
    parser.add_argument("--window-ms", type=float, default=5, help="the server's --batch-window-ms")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "serve_load")
    args = parser.parse_args(argv)

    from peftlab import load_test
    from peftlab.errors import cli_exit_code

    def body() -> None:
        record = load_test.load_test(args.run, args.adapters, args.clients, args.requests, args.duration,
                                     args.window_ms, args.others,
                                     shlex.join(["python", "benchmarks/serve_load.py", *sys.argv[1:]]))
        written = load_test.write(record, args.out)  # the record first: minutes of measurement are not lost
        print(load_test.report(record))
        print("wrote " + ", ".join(map(str, written)), file=sys.stderr)

    return cli_exit_code(body)


if __name__ == "__main__":
    sys.exit(main())

"""python -m peftlab.bench RECIPE — training throughput of one recipe three ways, side by side: the
tutorial Trainer, Trainer best practice, and peftlab (what each is and how rounds alternate: peftlab/benchmark.py),
with per-round speed-ups and each approach's model FLOPs utilisation against this machine's measured matmul peak.
--seeds gives one round per seed, --repeats more rounds, --ablation reruns peftlab with each speed setting off,
--profile times the stages of one run. Writes <out>/bench_throughput.md and .json.
Run it alone on the machine (e.g. under the CPU lock): it is a timing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from . import data as data_stage
from . import rundir
from .errors import cli_exit_code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m peftlab.bench", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="a.b=value")
    parser.add_argument("--train-limit", type=int, default=None, help="train on this many examples (seeded subset)")
    parser.add_argument("--eval-limit", type=int, default=None, help="validate on this many (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="one round of the three approaches per seed (default: the recipe's seed)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds per seed (default 1)")
    parser.add_argument("--ablation", action="store_true", help="also time peftlab with each speed setting off")
    parser.add_argument("--ablation-train-limit", type=int, default=2560,
                        help="training examples per ablation run (default 2560: 80 steps at batch 32; at 20 steps "
                             "the rounds of one variant differed by up to 20 %%)")
    parser.add_argument("--ablation-repeats", type=int, default=2, help="rounds of the ablation (default 2)")
    parser.add_argument("--profile", action="store_true", help="also time the stages of one peftlab run")
    parser.add_argument("--data-dir", default=None, help=f"local data folder (default: ${data_stage.DATA_DIR_ENV})")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="where bench_throughput.md/.json go")
    parser.add_argument("--worker", choices=["tutorial", "best_practice", "limit", "ablation", "profile"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # imported after parsing, not at the top: the library loads transformers' Trainer (seconds), which --help and
    # usage errors need not wait for
    from .benchmark import bench, worker

    if args.worker:
        result = worker(args.worker, args)
        rundir.write_json(args.result, result)
        return 0
    return cli_exit_code(lambda: bench(args, shlex.join(["python", "-m", "peftlab.bench", *argv])))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

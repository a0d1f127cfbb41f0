"""python -m peftlab.merge RUN_DIR --out DIR [--dtype float32|bfloat16|float16] — fold the adapter into the
base weights and export a model that plain transformers loads, verified against the adapter as trained
(peftlab/export.py says how)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from . import data as data_stage
from .errors import cli_exit_code
from .measure import disk_bytes, human_bytes


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m peftlab.merge", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run directory")
    parser.add_argument("--out", type=Path, required=True, help="export folder to create")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="float32")  # export.DTYPES
    parser.add_argument("--compare", type=int, default=256, help="validation examples for the logit check")
    parser.add_argument("--data-dir", default=None, help="local data folder (default: $PEFTLAB_DATA_DIR)")
    args = parser.parse_args(argv)
    # imported after parsing, not at the top: the library loads transformers' Trainer (seconds), which --help and
    # usage errors need not wait for
    from .export import export
    from .pipeline import quiet_libraries

    quiet_libraries()
    command = shlex.join(["python", "-m", "peftlab.merge", *argv])

    def merge() -> None:
        record = export(args.run, args.out, args.dtype, data_stage.data_dir(args.data_dir), args.compare, command)
        _print(args, record)

    return cli_exit_code(merge)


def _print(args, record: dict) -> None:
    v = record["verification"]
    print(f"exported {args.out} ({args.dtype}, {human_bytes(disk_bytes(args.out))})")
    print(f"max |Δlogit| vs the adapter model as trained: {v['max_abs_logit_diff']:.3g} on {v['compared_examples']} "
          f"examples; label agreement {100 * v['label_agreement']:.2f} %")
    print(f"validation: export {record['export_metrics']} | run {record['run_metrics']}")


if __name__ == "__main__":
    sys.exit(main())

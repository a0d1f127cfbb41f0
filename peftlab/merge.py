"""python -m peftlab.merge RUN_DIR --out DIR [--dtype float32|bfloat16|float16] [--base original|dequantized] — fold
the adapter into the base weights and export a model that plain transformers loads, verified against the adapter as
trained (peftlab/export.py says how)."""

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
    parser.add_argument("--base", choices=["original", "dequantized"], default="original",  # export.BASES
                        help="merge into the base's original full-precision weights (default) or, for a run trained "
                             "on a 4/8-bit base, into that base de-quantized: the model as trained")
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
        record = export(args.run, args.out, args.dtype, data_stage.data_dir(args.data_dir), args.compare, command,
                        args.base)
        _print(args, record)

    return cli_exit_code(merge)


def _print(args, record: dict) -> None:
    from .export import agreement

    v = record["verification"]
    print(f"exported {args.out} ({args.dtype}, {human_bytes(disk_bytes(args.out))}, {record['base']} base)")
    print(f"max |Δlogit| vs the adapter model as trained: {v['max_abs_logit_diff']:.3g} on {v['compared_examples']} "
          f"examples; {agreement(v)}")
    print(f"validation: export {record['export_metrics']} | run {record['run_metrics']}")
    for base, other in record["bases"].items():
        if base != record["base"]:
            print(f"{base} base (measured, not written; --base {base} writes it): max |Δlogit| "
                  f"{other['verification']['max_abs_logit_diff']:.3g}, {agreement(other['verification'])}; "
                  f"validation {other['export_metrics']}")
    if not record["data_matches_run"]:
        print("warning: the validation files differ from the run's (md5): the scores above are of other data",
              file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

"""python -m peftlab.serve RUN_OR_EXPORT [--adapter NAME=RUN ...] — serve a finished run (or a merged export), and
other runs' adapters of the same base, over HTTP (peftlab/serving.py has the endpoints; README, "Serve").

The run's own adapter is named "default"; each --adapter NAME=RUN adds the adapter of another run trained on the
same base weights (checked by fingerprint) for the same task: one base model in memory, however many adapters."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import PeftlabError, check, cli_exit_code


def adapter_arg(value: str) -> tuple[str, Path]:
    name, _, run = value.partition("=")
    if not name or not run:
        raise argparse.ArgumentTypeError(f"{value!r}: give NAME=RUN_DIR, e.g. sst2=runs/lora_sst2-20260101-1200")
    return name, Path(run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftlab.serve", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run directory or a peftlab.merge export folder")
    parser.add_argument("--adapter", type=adapter_arg, action="append", default=[], metavar="NAME=RUN",
                        help="another run's adapter of the same base, served under NAME (repeatable)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="require the header Authorization: Bearer KEY")
    parser.add_argument("--max-batch", type=int, default=16, help="most inputs per model call; 1 turns batching off")
    parser.add_argument("--batch-window-ms", type=float, default=5,
                        help="how long the first request of a batch waits for others")
    parser.add_argument("--max-inputs", type=int, default=64, help="most inputs per /v1/predict request")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body")
    args = parser.parse_args(argv)
    # imported after parsing, not at the top: the library loads torch and transformers (seconds), which --help and
    # usage errors need not wait for
    from .pipeline import quiet_libraries

    quiet_libraries()
    return cli_exit_code(lambda: _serve(args))


def _serve(args) -> None:
    check(args.max_batch >= 1 and args.batch_window_ms >= 0 and args.max_inputs >= 1 and args.max_body_bytes >= 1,
          "--max-batch, --max-inputs and --max-body-bytes must be >= 1 and --batch-window-ms >= 0")
    names = [name for name, _ in args.adapter]
    check(len(set(names)) == len(names), f"--adapter: a name is given twice ({', '.join(names)}); name each once")
    try:
        import uvicorn
    except ImportError:
        raise PeftlabError("the server needs fastapi and uvicorn: pip install -e '.[serve]'") from None
    from . import serving

    adapters = serving.load_adapters(args.run, dict(args.adapter))
    app = serving.create_app(adapters, args.api_key, args.max_batch, args.batch_window_ms,
                             serving.Limits(args.max_inputs, args.max_body_bytes))
    print(f"serving {', '.join(adapters)} on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    sys.exit(main())

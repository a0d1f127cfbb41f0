"""Causal-LM throughput of a recipe: training tokens/s with each speed setting on and off, greedy batched generation
tokens/s at several batch sizes, and the model FLOPs utilisation of each (what is measured: peftlab/causal_lm_bench.py).
Writes <out>/bench_causal_lm.md and .json. A timing: run it alone on the machine, e.g.

    flock /tmp/peftlab-cpu.lock python benchmarks/causal_lm_bench.py            # recipes/lora_gsm8k.py, ~15 min
    python benchmarks/causal_lm_bench.py --quick --out /tmp/bench               # a smoke: 1 step, 4 short prompts
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's peftlab, whatever is installed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from peftlab.causal_lm_bench import VARIANTS, Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path, nargs="?", default=REPO / "recipes" / "lora_gsm8k.py")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="a.b=value")
    parser.add_argument("--steps", type=int, default=Settings.steps, help="measured training steps per setting")
    parser.add_argument("--warmup", type=int, default=Settings.warmup, help="unmeasured steps before them")
    parser.add_argument("--rounds", type=int, default=Settings.rounds,
                        help="rounds of the training settings, alternating their order (compile: the first only)")
    parser.add_argument("--prompts", type=int, default=Settings.prompts, help="generation prompts")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(Settings.batch_sizes))
    parser.add_argument("--decoders", nargs="+", default=list(Settings.decoders), choices=list(Settings.decoders),
                        help="pruned: finished rows leave the batch; generate: transformers' generate keeps them; unmerged: "
                             "pruned, the adapter not merged into the weights")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="a smoke: 1 warm-up + 1 step, 4 prompts, 16 tokens")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=REPO / "reports")
    args = parser.parse_args(argv)

    from peftlab import pipeline
    from peftlab.causal_lm_bench import bench
    from peftlab.errors import cli_exit_code

    settings = Settings(steps=args.steps, warmup=args.warmup, rounds=args.rounds, prompts=args.prompts,
                        max_new_tokens=args.max_new_tokens,
                        batch_sizes=tuple(args.batch_sizes), decoders=tuple(args.decoders),
                        variants=tuple(args.variants), overrides=args.overrides)
    if args.quick:
        settings.steps, settings.warmup, settings.rounds, settings.prompts, settings.max_new_tokens = 1, 1, 1, 4, 16
        settings.batch_sizes, settings.peak_seconds = (1, 4), 1.0
    pipeline.quiet_libraries()
    command = shlex.join(["python", "benchmarks/causal_lm_bench.py", *argv])
    return cli_exit_code(lambda: print_summary(bench(args.recipe, settings, args.data_dir, args.out, command), args.out))


def print_summary(record: dict, out: Path) -> int:
    for name, result in record["training"].items():
        print(f"train {name}: " + (result["error"] if "error" in result else
                                   f"{result['tokens_per_second']:.1f} tokens/s, MFU {100 * result['mfu']:.1f} %"))
    for result in record["generation"]["runs"]:
        print(f"generate batch {result['batch_size']}, {result['decoder']}: "
              f"{result['tokens_per_second']:.1f} tokens/s, "
              f"MFU {100 * result['mfu']:.1f} %")
    print(f"report: {out / 'bench_causal_lm.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

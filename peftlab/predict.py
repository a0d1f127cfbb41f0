"""python -m peftlab.predict RUN_OR_EXPORT "text" ... | --input FILE --output FILE — predictions from a finished run
or a merged export.

--input reads a JSON lines, CSV or TSV file with the recipe's input columns and writes one JSON record per row, in
input order, with the fields a single text gets. --eval scores the run's evaluation split again from the reloaded
weights: it must match the run's report (a reload that lost the trained head would not); it refuses files whose md5
differs from the run's unless --allow-other-data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import data as data_stage
from .errors import PeftlabError, check, cli_exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftlab.predict", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run directory or a peftlab.merge export folder")
    parser.add_argument("texts", nargs="*", help="inputs to predict")
    parser.add_argument("--input", type=Path, default=None,
                        help="a .jsonl/.csv/.tsv file with the recipe's input columns (data.text, data.text_pair)")
    parser.add_argument("--output", type=Path, default=None, help="with --input: the JSON lines file to write")
    parser.add_argument("--eval", action="store_true", help="re-score the run's evaluation split")
    parser.add_argument("--allow-other-data", action="store_true",
                        help="--eval: score the evaluation split even if its files differ from the run's (md5)")
    parser.add_argument("--data-dir", default=None, help="local data folder (default: $PEFTLAB_DATA_DIR)")
    parser.add_argument("--context", default=None, help="question answering: the passage the texts (questions) "
                                                        "are answered from")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="causal_lm: longest generation in tokens (default: the recipe's data.max_new_tokens)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="causal_lm: 0 decodes greedily (default); above 0 samples at that temperature")
    args = parser.parse_intermixed_args(argv)  # texts may come before or after the options
    # imported after parsing, not at the top: the library loads transformers' Trainer (seconds), which --help and
    # usage errors need not wait for
    from .pipeline import quiet_libraries

    quiet_libraries()
    return cli_exit_code(lambda: _predict(args))


def _predict(args) -> None:
    from . import inference  # after parsing, as in main()
    from .artifacts import load_any
    from .evaluation import evaluate_split

    if not args.texts and not args.eval and args.input is None:
        raise PeftlabError("nothing to do: give texts to predict, --input FILE --output FILE, or --eval to re-score "
                           "the evaluation split")
    check(not (args.texts and args.input), "give texts or --input FILE, not both")
    check((args.input is None) == (args.output is None), "--input FILE and --output FILE go together: give both")
    if args.input is not None:
        inference.check_paths(args.input, args.output)
    data_root = data_stage.data_dir(args.data_dir) if args.eval else None
    trained = load_any(args.run)
    differ = inference.eval_data_differences(trained, data_root) if args.eval else []
    check(not differ or args.allow_other_data,
          f"--eval: {'; '.join(differ)}: not the data the run was evaluated on; pass --data-dir with the run's data, "
          "or --allow-other-data to score these files anyway")
    options = {"context": args.context, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    for row in inference.predict_texts(trained, args.texts, **options) if args.texts else ():
        print(json.dumps(row))
    if args.input is not None:
        count = inference.predict_file(trained, args.input, args.output, **options)
        print(f"wrote {count} predictions to {args.output}", file=sys.stderr)
    if args.eval:
        if differ:
            print(f"warning: scoring data that differ from the run's: {'; '.join(differ)}", file=sys.stderr)
        print(json.dumps({"eval": evaluate_split(trained, data_root), "data_matches_run": not differ}))


if __name__ == "__main__":
    sys.exit(main())

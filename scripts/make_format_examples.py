"""Build small real data files in every shape peftlab reads, for the recipes/*_{csv,jsonl,parquet,alpaca,sharegpt,
messages}.py examples, from the GSM8K and SST-2 copies in the data directory (read their SOURCE.md):

    python scripts/make_format_examples.py [--source DIR] [--out DIR]

--source: the folder holding gsm8k/ and sst2/ (default: $PEFTLAB_DATA_DIR); --out: where the files go (default:
<source>/formats, where the recipes' relative paths look when --data-dir or $PEFTLAB_DATA_DIR names the folder
above it). Writes, with rows drawn with --seed:
- formats/gsm8k/{alpaca,sharegpt,messages}_{train,test}.jsonl: GSM8K problems as alpaca instructions
  (instruction/input/output), ShareGPT conversations (from/value) and OpenAI messages (role/content). In the
  sharegpt and messages files every --multi-turn-th row is a two-problem conversation (a follow-up problem after the
  first one's worked answer) behind a system turn; both files hold the same conversations.
- formats/sst2/{train,validation}.{csv,jsonl,parquet}: --sst2-train SST-2 training sentences and the 872 validation
  sentences, with the columns named `review` and `sentiment` (negative/positive), which the recipes map.
The files are data, not code: keep them out of the repository.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
from pathlib import Path

SYSTEM = "You are a patient math tutor. Work through each problem step by step and end with '#### <answer>'."
FOLLOW_UP = "Thanks! Here is another one: "


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def conversations(problems: list[dict], multi_turn: int) -> list[list[dict]]:
    """Each problem as a question and its answer; every multi_turn-th conversation also takes the next problem as a
    follow-up question (two assistant turns) and opens with a system turn."""
    out, i = [], 0
    while i < len(problems):
        first = problems[i]
        turns = [{"role": "user", "content": first["question"]}, {"role": "assistant", "content": first["answer"]}]
        if multi_turn and len(out) % multi_turn == multi_turn - 1 and i + 1 < len(problems):
            second = problems[i + 1]
            turns = [{"role": "system", "content": SYSTEM}, *turns,
                     {"role": "user", "content": FOLLOW_UP + second["question"]},
                     {"role": "assistant", "content": second["answer"]}]
            i += 1
        out.append(turns)
        i += 1
    return out


def gsm8k_files(source: Path, out: Path, sizes: dict[str, int], multi_turn: int, rng: random.Random) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sharegpt_roles = {"system": "system", "user": "human", "assistant": "gpt"}
    for split, size in sizes.items():
        problems = read_jsonl(source / "gsm8k" / f"{split}.jsonl")
        problems = [problems[i] for i in sorted(rng.sample(range(len(problems)), min(size, len(problems))))]
        write_jsonl(out / f"alpaca_{split}.jsonl",
                    [{"instruction": p["question"], "input": "", "output": p["answer"]} for p in problems])
        chats = conversations(problems, multi_turn)
        write_jsonl(out / f"messages_{split}.jsonl", [{"messages": turns} for turns in chats])
        write_jsonl(out / f"sharegpt_{split}.jsonl", [
            {"conversations": [{"from": sharegpt_roles[t["role"]], "value": t["content"]} for t in turns]}
            for turns in chats])
        print(f"{out}: {split}: {len(problems)} problems, {len(chats)} conversations "
              f"({sum(len(c) > 2 for c in chats)} with a follow-up)")


def sst2_files(source: Path, out: Path, n_train: int, rng: random.Random) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    names = ["negative", "positive"]
    for split, size in (("train", n_train), ("validation", None)):
        with open(source / "sst2" / f"{split}.tsv", encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))  # as peftlab reads GLUE's TSV
        if size is not None:
            rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), min(size, len(rows))))]
        records = [{"review": r["sentence"], "sentiment": names[int(r["label"])]} for r in rows]
        with open(out / f"{split}.csv", "w", encoding="utf-8", newline="") as fh:  # standard CSV quoting
            writer = csv.DictWriter(fh, fieldnames=["review", "sentiment"])
            writer.writeheader()
            writer.writerows(records)
        write_jsonl(out / f"{split}.jsonl", records)
        pq.write_table(pa.Table.from_pylist(records), out / f"{split}.parquet")
        print(f"{out}: {split}: {len(records)} sentences as csv, jsonl and parquet")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=os.environ.get("PEFTLAB_DATA_DIR"),
                        help="folder holding gsm8k/ and sst2/ (default: $PEFTLAB_DATA_DIR)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <source>/formats)")
    parser.add_argument("--gsm8k-train", type=int, default=1000, help="GSM8K training problems (default 1000)")
    parser.add_argument("--gsm8k-test", type=int, default=300, help="GSM8K test problems (default 300)")
    parser.add_argument("--multi-turn", type=int, default=4,
                        help="every N-th conversation takes a follow-up problem (default 4; 0: none)")
    parser.add_argument("--sst2-train", type=int, default=5000, help="SST-2 training sentences (default 5000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.source is None or not (args.source / "gsm8k").is_dir() or not (args.source / "sst2").is_dir():
        print(f"error: no gsm8k/ and sst2/ in {args.source}; pass --source DIR or set $PEFTLAB_DATA_DIR",
              file=sys.stderr)
        return 2
    out = args.out or args.source / "formats"
    try:
        gsm8k_files(args.source, out / "gsm8k", {"train": args.gsm8k_train, "test": args.gsm8k_test},
                    args.multi_turn, random.Random(args.seed))
        sst2_files(args.source, out / "sst2", args.sst2_train, random.Random(args.seed))
    except OSError as err:  # e.g. a read-only data directory
        print(f"error: cannot write {err.filename or out}: {err.strerror}; pass --out to a writable folder",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

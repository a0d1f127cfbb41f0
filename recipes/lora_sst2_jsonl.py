"""lora_sst2_csv with the same sentences read from JSON lines (one {"review", "sentiment"} object per line)."""

from dataclasses import replace

from lora_sst2_csv import recipe as from_csv

recipe = replace(from_csv, name="lora_sst2_jsonl",
                 data=replace(from_csv.data, files={"train": "formats/sst2/train.jsonl",
                                                    "validation": "formats/sst2/validation.jsonl"}))

"""lora_sst2_csv with the same sentences read from Parquet (columns review, sentiment)."""

from dataclasses import replace

from lora_sst2_csv import recipe as from_csv

recipe = replace(from_csv, name="lora_sst2_parquet",
                 data=replace(from_csv.data, files={"train": "formats/sst2/train.parquet",
                                                    "validation": "formats/sst2/validation.parquet"}))

"""lora_sst2 on your own files: SST-2 sentences read from CSV (standard quoting), with the file's own column names
mapped (`review` -> data.text, `sentiment` -> data.label, whose values are the label names).

The files come from scripts/make_format_examples.py (5,000 training sentences drawn from SST-2's train split, and the
872 validation sentences); relative paths are read from the data directory (--data-dir or $PEFTLAB_DATA_DIR), so
build them into <data dir>/formats. The checkpoint is selected on 500 of the training sentences (Data.selection);
the validation file is scored once, after training. lora_sst2_jsonl and lora_sst2_parquet read the same sentences
from JSON lines and Parquet: the three runs must agree to the last digit.
"""

from dataclasses import replace

from peftlab import Data
from lora_sst2 import recipe as lora

recipe = replace(lora, name="lora_sst2_csv",
                 data=Data(files={"train": "formats/sst2/train.csv", "validation": "formats/sst2/validation.csv"},
                           text="review", label="sentiment", max_length=128))

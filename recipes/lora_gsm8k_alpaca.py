"""lora_gsm8k on instruction data in the alpaca shape: one {"instruction", "input", "output"} object per line, rendered
as a user turn (instruction, then the input after a blank line when there is one) and an assistant turn through the
tokenizer's chat template; the loss counts the assistant turn and its end-of-turn token only.

The files come from scripts/make_format_examples.py (1,000 GSM8K training problems, 300 test problems); relative paths
are read from the data directory (--data-dir or $PEFTLAB_DATA_DIR), so build them into <data dir>/formats. A short
example run: 80 training rows, selection on 32 held out of train, perplexity reported on 48 test rows and exact match
of the final answer on 10 of them (greedy, before and after training).
"""

from dataclasses import replace

from peftlab import Data
from lora_gsm8k import recipe as lora

recipe = replace(lora, name="lora_gsm8k_alpaca",
                 data=Data(files={"train": "formats/gsm8k/alpaca_train.jsonl", "test": "formats/gsm8k/alpaca_test.jsonl"},
                           chat_format="alpaca", max_length=640, eval_split="test", selection=32, train_limit=80,
                           eval_limit=48, strip_regex=r"<<[^>]*>>", generate_split="test", generate_limit=10,
                           max_new_tokens=200))

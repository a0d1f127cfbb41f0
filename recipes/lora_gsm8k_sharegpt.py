"""lora_gsm8k_alpaca on ShareGPT conversations: {"conversations": [{"from": "human" | "gpt" | "system", "value": ...}]}.
Every fourth conversation of the files holds two problems (a follow-up question after the first worked answer)
behind a system turn: the loss counts both assistant turns; generation answers the last one, with the first
exchange as context. The same conversations as lora_gsm8k_messages, in the other shape."""

from dataclasses import replace

from lora_gsm8k_alpaca import recipe as alpaca

recipe = replace(alpaca, name="lora_gsm8k_sharegpt",
                 data=replace(alpaca.data, chat_format="sharegpt",
                              files={"train": "formats/gsm8k/sharegpt_train.jsonl",
                                     "test": "formats/gsm8k/sharegpt_test.jsonl"}))

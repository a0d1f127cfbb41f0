"""lora_gsm8k_messages with the same conversations in the ShareGPT shape:
{"conversations": [{"from": "human" | "gpt" | "system", "value": ...}]}."""

from dataclasses import replace

from lora_gsm8k_messages import recipe as messages

recipe = replace(messages, name="lora_gsm8k_sharegpt",
                 data=replace(messages.data, chat_format="sharegpt", files={
                     "train": "formats/gsm8k/sharegpt_train.jsonl", "test": "formats/gsm8k/sharegpt_test.jsonl"}))

"""lora_gsm8k_alpaca on OpenAI-style chat data: {"messages": [{"role": "system" | "user" | "assistant", "content": ...}]}.
Every fourth conversation of the files holds two problems (a follow-up question after the first worked answer)
behind a system turn: the loss counts both assistant turns; generation answers the last one, with the first
exchange as context. lora_gsm8k_sharegpt reads the same conversations in the ShareGPT shape."""

from dataclasses import replace

from lora_gsm8k_alpaca import recipe as alpaca

recipe = replace(alpaca, name="lora_gsm8k_messages",
                 data=replace(alpaca.data, chat_format="messages",
                              files={"train": "formats/gsm8k/messages_train.jsonl",
                                     "test": "formats/gsm8k/messages_test.jsonl"}))

"""Full fine-tuning, LoRA, QLoRA, DoRA, prefix tuning and a Pfeiffer adapter on GSM8K with SmolLM2-135M-Instruct.
Cheaper than the single-method recipes so the comparison fits the CPU budget: 160 training problems instead of 240
(20 optimizer steps instead of 30) and exact match on the first 20 test problems instead of 30; the same 64 held-out
problems for perplexity in every variant."""

from peftlab import Comparison

comparison = Comparison(
    name="compare_gsm8k",
    recipes=["full_gsm8k.py", "lora_gsm8k.py", "qlora_gsm8k.py", "dora_gsm8k.py", "prefix_gsm8k.py",
             "pfeiffer_gsm8k.py"],
    baseline="full_gsm8k",
    seeds=[0],
    overrides=["data.train_limit=160", "data.generate_limit=20"],
)

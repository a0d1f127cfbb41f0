"""Full fine-tuning, LoRA and QLoRA on GSM8K with SmolLM2-135M-Instruct, each on a smaller training subset than the
single-method recipes (400 problems instead of 800) so the comparison fits the CPU budget; same held-out problems
and the same 40 test problems for every variant."""

from peftlab.compare import Comparison

comparison = Comparison(
    name="compare_gsm8k",
    recipes=["full_gsm8k.py", "lora_gsm8k.py", "qlora_gsm8k.py"],
    baseline="full_gsm8k",
    seeds=[0],
    overrides=["data.train_limit=400"],
)

"""LoRA against full fine-tuning on SQuAD v1.1, scored on the whole test half (5,609 questions, not compare_squad's
500): does LoRA reach 90 % of full fine-tuning's F1 within the noise? On 500 questions compare_squad's interval of
the difference was too wide to say (reports/compare_squad.md). Same recipes, training subset and protocol as
compare_squad; each method at the rate compare_squad chose on the selection split (full 2e-4, LoRA 2e-3; one-point
grids), 5 seeds: with 3, the seed-to-seed spread left the interval of LoRA's share too
wide to decide. About 10 min a run on a 2-core CPU (each run scores 5,609 questions).
"""

from peftlab import Comparison

comparison = Comparison(
    name="compare_squad_lora",
    recipes=["full_squad.py", "lora_squad.py"],
    baseline="full_squad",
    seeds=[0, 1, 2, 3, 4],
    lrs={"full_squad.py": [2e-4], "lora_squad.py": [2e-3]},
    overrides=["data.eval_limit=None"],
)

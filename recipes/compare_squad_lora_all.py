"""LoRA against full fine-tuning on SQuAD v1.1, trained on every question of the training half outside the
selection part (4,465 of validation.json's 4,961, one epoch, 288 steps at batch 16) and scored on the whole test
half (5,609 questions). compare_squad_lora trains on 1,000 of them (65 steps): there the spread between seeds
(reports/compare_squad_lora.md) was too wide to tell whether LoRA reaches 90 % of full fine-tuning's F1. Four and a
half times the steps bring both methods nearer convergence, which should narrow that spread.

The rates compare_squad chose at 1,000 questions need not suit four times the steps (a longer schedule usually
prefers a lower rate), so each method searches a two-point grid on seed 0 — that rate and the one half of it —
choosing on the selection part, then seeds 1 to 4 run at the chosen rate: 2 × (2 + 4) runs (the report gives each
one's time). On a 2-core CPU it takes more than one sitting: python -m peftlab.compare
recipes/compare_squad_lora_all.py --resume reports/compare_squad_lora_all/records.
"""

from peftlab import Comparison

comparison = Comparison(
    name="compare_squad_lora_all",
    recipes=["full_squad.py", "lora_squad.py"],
    baseline="full_squad",
    seeds=[0, 1, 2, 3, 4],
    lrs={"full_squad.py": [1e-4, 2e-4], "lora_squad.py": [1e-3, 2e-3]},
    overrides=["data.train_limit=None", "data.eval_limit=None"],
)

"""Full fine-tuning, LoRA, QLoRA and Pfeiffer adapters on SQuAD v1.1, each exactly as its recipe says (1,000 training
questions of validation.json for one epoch, 500 questions of test.json; see squad_base for why so few). No
overrides, so every variant is also its recipe's own run and writes reports/<recipe>.md.

Budget: about 12 min on a 2-core CPU (~2.5 min of training per variant, ~20 s of evaluation). Small data and one
epoch favour methods that start close to a working model: read the table as "what 1,000 questions buy".
"""

from peftlab import Comparison

comparison = Comparison(
    name="compare_squad",
    recipes=["full_squad.py", "lora_squad.py", "qlora_squad.py", "pfeiffer_squad.py"],
    baseline="full_squad",
    seeds=[0],
)

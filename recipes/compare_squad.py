"""Full fine-tuning, LoRA, QLoRA and Pfeiffer adapters on SQuAD v1.1: 1,500 training questions (seeded subset of
validation.json) for one epoch, scored on 1,000 questions of test.json (seeded subset; the full 5,609 take
~3.5 min per evaluation pass on 2 cores).

Budget: about 19 min on a 2-core CPU. Measured on the packaged MiniLM (2 threads, batch 16 x 200 tokens, the
size of a SQuAD question + paragraph): 2.34 s/step full, 2.55 LoRA, 2.58 QLoRA, 1.64 Pfeiffer; ~97 steps each
-> ~15 min of training, plus evaluation (~40 s per pass) and loading/saving. Small data and one epoch favour the
methods with few parameters: read the result as "what 1,500 questions buy", not as converged SQuAD scores.
"""

from peftlab.compare import Comparison

comparison = Comparison(
    name="compare_squad",
    recipes=["full_squad.py", "lora_squad.py", "qlora_squad.py", "pfeiffer_squad.py"],
    baseline="full_squad",
    seeds=[0],
    overrides=["data.train_limit=1500", "data.eval_limit=1000", "train.epochs=1"],
)

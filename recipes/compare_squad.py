"""Full fine-tuning, LoRA, QLoRA and Pfeiffer adapters on SQuAD v1.1, each as its recipe says (1,000 training
questions for one epoch, 500 questions of test.json; see squad_base for why so few), with a learning rate chosen
per method. Small data and one epoch favour methods that start close to a working model: read the table as "what
1,000 questions buy".

Each method runs its family's 3-point learning-rate grid (lr_search.DEFAULT_GRIDS) on seed 0, plus up to two
points beyond the grid's edge while the best is at the edge, keeps the rate with the best selection-split F1, then
runs seeds 1 and 2 at it: 4 methods × (3 to 5 + 2) runs. QLoRA's runs are the slowest (bitsandbytes on CPU);
reports/compare_squad.md gives the wall time of the last comparison and the machine's load while it ran.
"""

from peftlab import Comparison

comparison = Comparison(
    name="compare_squad",
    recipes=["full_squad.py", "lora_squad.py", "qlora_squad.py", "pfeiffer_squad.py"],
    baseline="full_squad",
    seeds=[0, 1, 2],
    lrs="auto",
)

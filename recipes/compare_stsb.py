"""Full fine-tuning, LoRA, QLoRA and Pfeiffer adapters on STS-B, each as its recipe says (2,000-pair training
subset, 2 epochs, all 1,500 validation pairs; see stsb_base), with a learning rate chosen per method.

Each method runs its family's 3-point learning-rate grid (lr_search.DEFAULT_GRIDS) on seed 0, keeps the rate with
the best selection-split Pearson, then runs seeds 1 and 2 at it: 4 methods × (3 + 2) = 20 runs.
Cost on a 2-core CPU: about 27 min (~80 s a run: ~50 s of training, evaluation ~10 s per pass).
"""

from peftlab import Comparison

comparison = Comparison(
    name="compare_stsb",
    recipes=["full_stsb.py", "lora_stsb.py", "qlora_stsb.py", "pfeiffer_stsb.py"],
    baseline="full_stsb",
    seeds=[0, 1, 2],
    lrs="auto",
)

"""Full fine-tuning, LoRA, QLoRA and Pfeiffer adapters on WNUT-17 NER, each as its recipe says (2,000-sentence
training subset, 4 epochs, all 1,009 validation sentences, entity-level F1; see wnut17_base), with a learning rate
chosen per method.

Each method runs its family's 3-point learning-rate grid (lr_search.DEFAULT_GRIDS) on seed 0, keeps the rate with
the best selection-split entity F1, then runs seeds 1 and 2 at it: 4 methods × (3 + 2) = 20 runs. Three seeds:
LoRA's F1 at one borrowed rate moved by tens of points between seeds (one seed would mislead).
Cost on a 2-core CPU: about 50 min (~2 min a run: ~100 s of training, QLoRA about twice that).
"""

from peftlab import Comparison

comparison = Comparison(
    name="compare_wnut17",
    recipes=["full_wnut17.py", "lora_wnut17.py", "qlora_wnut17.py", "pfeiffer_wnut17.py"],
    baseline="full_wnut17",
    seeds=[0, 1, 2],
    lrs="auto",
)

"""Every method against full fine-tuning on SST-2, on a fixed 4,000-sentence training subset (drawn with the data
seed, the same for every variant and seed), with a learning rate chosen per method.

Each method first runs its family's 3-point learning-rate grid (lr_search.DEFAULT_GRIDS) on seed 0, keeps the
rate with the best selection-split accuracy, then runs seeds 1 and 2 at it: 10 methods × (3 + 2) = 50 runs.
Cost on a 2-core CPU: about 35 min (a run of 4,000 sentences takes ~40 s, half the 8,000-sentence runs' ~65 s).
"""

from peftlab import Comparison

comparison = Comparison(
    name="compare_sst2",
    recipes=["full_sst2.py", "lora_sst2.py", "qlora_sst2.py", "lora8bit_sst2.py", "dora_sst2.py", "ia3_sst2.py",
             "prefix_sst2.py", "prompt_sst2.py", "houlsby_sst2.py", "pfeiffer_sst2.py"],
    baseline="full_sst2",
    seeds=[0, 1, 2],
    lrs="auto",
    overrides=["data.train_limit=4000"],
)

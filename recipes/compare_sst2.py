"""Every method against full fine-tuning on SST-2, on a fixed 8,000-sentence training subset (seeded, the
same for all variants) so the whole comparison fits in about half an hour on a 2-core CPU."""

from peftlab import Comparison

comparison = Comparison(
    name="compare_sst2",
    recipes=["full_sst2.py", "lora_sst2.py", "qlora_sst2.py", "lora8bit_sst2.py", "dora_sst2.py", "ia3_sst2.py",
             "prefix_sst2.py", "prompt_sst2.py", "houlsby_sst2.py", "pfeiffer_sst2.py"],
    baseline="full_sst2",
    seeds=[0],
    overrides=["data.train_limit=8000"],
)

"""Full fine-tuning, LoRA, QLoRA and Pfeiffer adapters on STS-B, on a fixed 4,000-pair training subset (seeded,
the same for all variants; full STS-B train has 5,749) for 3 epochs, scored on all 1,500 validation pairs.

Budget: about 18 min on a 2-core CPU. Measured on the packaged MiniLM (2 threads, batch 32 x 32 tokens, the
size of an STS-B pair): 0.57 s/step full, 0.65 LoRA, 0.73 QLoRA, 0.43 Pfeiffer; 375 steps each -> ~15 min of
training, plus evaluation (~8 s per pass) and loading/saving.
"""

from peftlab.compare import Comparison

comparison = Comparison(
    name="compare_stsb",
    recipes=["full_stsb.py", "lora_stsb.py", "qlora_stsb.py", "pfeiffer_stsb.py"],
    baseline="full_stsb",
    seeds=[0],
    overrides=["data.train_limit=4000"],
)

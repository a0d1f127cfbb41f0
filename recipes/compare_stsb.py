"""Full fine-tuning, LoRA, QLoRA and Pfeiffer adapters on STS-B, each exactly as its recipe says (2,000-pair training
subset, 2 epochs, all 1,500 validation pairs; see stsb_base). No overrides, so every variant is also its recipe's
own run and writes reports/<recipe>.md.

Budget: about 8 min on a 2-core CPU (~100 s of training per variant, evaluation ~10 s per pass).
"""

from peftlab import Comparison

comparison = Comparison(
    name="compare_stsb",
    recipes=["full_stsb.py", "lora_stsb.py", "qlora_stsb.py", "pfeiffer_stsb.py"],
    baseline="full_stsb",
    seeds=[0],
)

"""Full fine-tuning, LoRA, QLoRA and Pfeiffer adapters on WNUT-17 NER: all 3,394 training sentences (entities are
rare, so no subset), the recipes' 3 epochs, scored on all 1,009 validation sentences (entity-level F1).

Budget: about 16 min on a 2-core CPU. Measured on the packaged MiniLM (2 threads, batch 32 x 40 tokens):
0.84 s/step full, 1.01 LoRA, 0.83 QLoRA, 0.49 Pfeiffer; WNUT sentences average ~30 word pieces, so ~3/4 of
that over 321 steps each -> ~13 min of training, plus evaluation (~6 s per pass) and loading/saving.
"""

from peftlab.compare import Comparison

comparison = Comparison(
    name="compare_wnut17",
    recipes=["full_wnut17.py", "lora_wnut17.py", "qlora_wnut17.py", "pfeiffer_wnut17.py"],
    baseline="full_wnut17",
    seeds=[0],
    overrides=[],
)

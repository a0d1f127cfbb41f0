"""The methods added after compare_sst2 (LoRA's initialisations PiSSA, OLoRA, EVA, CorDA and LoftQ, LoRA+, rsLoRA,
VeRA, AdaLoRA, OFT, BOFT) against the same full fine-tuning and LoRA rows, under compare_sst2's protocol: the same
4,000-sentence training subset, a learning rate chosen per method on the selection split, seeds 0, 1 and 2. A second
file rather than 21 rows in compare_sst2.py, whose committed report holds the first ten: run this one to add these.
QLoRA is here too, so that LoftQ (its quantization-aware initialisation) is tested against it on the same examples
(pairs).
Cost: 14 methods × (3 + 2) runs, over an hour on a 2-core CPU; --resume continues it after a stop.
"""

from peftlab import Comparison

comparison = Comparison(
    name="compare_sst2_more",
    recipes=["full_sst2.py", "lora_sst2.py", "rslora_sst2.py", "loraplus_sst2.py", "pissa_sst2.py", "olora_sst2.py",
             "eva_sst2.py", "corda_sst2.py", "qlora_sst2.py", "loftq_sst2.py", "vera_sst2.py", "adalora_sst2.py",
             "oft_sst2.py", "boft_sst2.py"],
    baseline="full_sst2",
    seeds=[0, 1, 2],
    lrs="auto",
    overrides=["data.train_limit=4000"],
    pairs={"loftq_sst2": "qlora_sst2"},  # LoftQ's point: a better start than plain QLoRA on the same 4-bit base
)

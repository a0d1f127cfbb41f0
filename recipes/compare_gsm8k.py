"""Full fine-tuning, LoRA and QLoRA on GSM8K with SmolLM2-135M-Instruct, 3 seeds, ranked by perplexity on 128
held-out test problems (continuous, so they separate the methods), with a learning rate chosen per method on the
selection split's perplexity (64 training problems held out).

Exact match on 250 test problems for full fine-tuning, LoRA and QLoRA, on seed 0, beside the base model's, which is
computed once per base (the 16-bit base for full and LoRA, the 4-bit one for QLoRA). Their learning-rate grid runs
leave generation out (the rate is chosen on the selection split, which generation does not score) and the chosen
rate runs again on seed 0 with it.

Sized for a 2-core CPU, and what that cut: 96 training problems (12 optimizer steps of 8); 3-point grids given
here, not extended past their edge (LoRA's and QLoRA's centred on 3e-3, which an earlier LoRA grid of 3e-4..3e-3
chose at its edge on the selection split); exact match on seed 0 only (a pass over 250 prompts takes longer than a
training run); generation in batches of 64 (faster than the recipes' own, which stay below the training peak). 18 runs and 5
generation passes, about 2 hours. The other methods (prefix tuning, Pfeiffer, DoRA and the newer ones) join by
perplexity in compare_gsm8k_more, or here with `--resume reports/compare_gsm8k/records` once added to `recipes`.
One seed with the recipes' own rates and no generation is a quick look:
`--seeds 0 --recipe-lrs --set data.generate_split=None`.
"""

from peftlab import Comparison

comparison = Comparison(
    name="compare_gsm8k",
    recipes=["full_gsm8k.py", "lora_gsm8k.py", "qlora_gsm8k.py"],
    baseline="full_gsm8k",
    seeds=[0, 1, 2],
    lrs={"full_gsm8k.py": [3e-5, 1e-4, 3e-4], "lora_gsm8k.py": [1e-3, 3e-3, 1e-2],
         "qlora_gsm8k.py": [1e-3, 3e-3, 1e-2]},
    generate=["full_gsm8k.py", "lora_gsm8k.py", "qlora_gsm8k.py"],
    generate_seeds=[0],
    overrides=["data.train_limit=96", "data.generate_limit=250", "train.generation_batch_size=64"],
    pairs={"qlora_gsm8k": "lora_gsm8k"},
)

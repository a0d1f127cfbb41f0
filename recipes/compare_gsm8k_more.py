"""The newer methods on GSM8K beside the same full fine-tuning, LoRA and QLoRA rows, under compare_gsm8k's protocol:
SmolLM2-135M-Instruct, 96 training problems, 3 seeds, ranked by perplexity on 128 test problems, a learning rate per
method chosen on the selection split's perplexity (the grid of each method's family, lr_search.DEFAULT_GRIDS, not
extended past its edge here: 3 runs on seed 0, then seeds 1 and 2 at the chosen rate), no generation (exact match
for full, LoRA and QLoRA is in compare_gsm8k). LoftQ is also tested against plain QLoRA, the PiSSA-style inits and
LoRA+ against LoRA.

EVA and CorDA do not apply: they are fitted to an encoder's batches here, and the recipe check refuses them for
causal LMs. DoRA is left out for time (its training takes about four times LoRA's on a 2-core CPU;
recipes/dora_gsm8k.py runs it alone). 12 variants x 5 runs, about 3.5 hours on a 2-core CPU.
"""

from peftlab import Comparison
from peftlab.lr_search import DEFAULT_GRIDS

RECIPES = {"full_gsm8k.py": "full", "lora_gsm8k.py": "lora", "qlora_gsm8k.py": "lora", "pissa_gsm8k.py": "lora",
           "olora_gsm8k.py": "lora", "loftq_gsm8k.py": "lora", "loraplus_gsm8k.py": "lora", "rslora_gsm8k.py": "lora",
           "vera_gsm8k.py": "vera", "adalora_gsm8k.py": "adalora", "oft_gsm8k.py": "oft", "boft_gsm8k.py": "boft"}

comparison = Comparison(
    name="compare_gsm8k_more",
    recipes=list(RECIPES),
    baseline="full_gsm8k",
    seeds=[0, 1, 2],
    lrs={file: DEFAULT_GRIDS[family] for file, family in RECIPES.items()},
    overrides=["data.train_limit=96", "data.generate_split=None"],
    pairs={"loftq_gsm8k": "qlora_gsm8k", "pissa_gsm8k": "lora_gsm8k", "olora_gsm8k": "lora_gsm8k",
           "loraplus_gsm8k": "lora_gsm8k"},
)

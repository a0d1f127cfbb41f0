"""DoRA and the newer methods on GSM8K beside the same full fine-tuning, LoRA and QLoRA rows, under compare_gsm8k's
protocol: SmolLM2-135M-Instruct, 96 training problems, 3 seeds, ranked by perplexity on 128 test problems, a
learning rate per method chosen on the selection split's perplexity, no generation (exact match for full, LoRA and
QLoRA is in compare_gsm8k). Full, LoRA and QLoRA run at the rates compare_gsm8k chose on the selection split
(reports/compare_gsm8k.md; one-point grids); the others search their family's grid (lr_search.DEFAULT_GRIDS, not
extended past its edge: 3 runs on seed 0, then seeds 1 and 2 at the chosen rate). LoftQ is tested against plain
QLoRA, PiSSA, OLoRA and LoRA+ against LoRA.

EVA and CorDA do not apply: they are fitted to an encoder's batches here, and the recipe check refuses them for
causal LMs. 59 runs, about 4.5 hours on a 2-core CPU: more than one sitting, so it continues from its kept records,
`--resume reports/compare_gsm8k_more/records`, on any machine.
"""

from peftlab import Comparison
from peftlab.lr_search import DEFAULT_GRIDS

CHOSEN_IN_COMPARE_GSM8K = {"full_gsm8k.py": [1e-4], "lora_gsm8k.py": [3e-3], "qlora_gsm8k.py": [3e-3]}
FAMILY = {"dora_gsm8k.py": "dora", "pissa_gsm8k.py": "lora", "olora_gsm8k.py": "lora", "loftq_gsm8k.py": "lora",
          "loraplus_gsm8k.py": "lora", "rslora_gsm8k.py": "lora", "vera_gsm8k.py": "vera",
          "adalora_gsm8k.py": "adalora", "oft_gsm8k.py": "oft", "boft_gsm8k.py": "boft"}

comparison = Comparison(
    name="compare_gsm8k_more",
    recipes=[*CHOSEN_IN_COMPARE_GSM8K, *FAMILY],
    baseline="full_gsm8k",
    seeds=[0, 1, 2],
    lrs=CHOSEN_IN_COMPARE_GSM8K | {file: DEFAULT_GRIDS[family] for file, family in FAMILY.items()},
    overrides=["data.train_limit=96", "data.generate_split=None"],
    pairs={"loftq_gsm8k": "qlora_gsm8k", "pissa_gsm8k": "lora_gsm8k", "olora_gsm8k": "lora_gsm8k",
           "loraplus_gsm8k": "lora_gsm8k"},
)

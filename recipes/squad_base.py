"""The SQuAD v1.1 base every SQuAD recipe derives from: MiniLM encoder, extractive question answering, selected
on SQuAD F1 (exact match reported too; both as fractions, the official script prints percentages).

Only the official dev set is available offline, split by article into two halves with no shared context:
this trains on validation.json (4,961 questions) and evaluates on test.json (5,609), so scores are not
comparable with the SQuAD leaderboard. Contexts longer than 384 tokens are read in windows sharing 128 tokens;
answers are decoded from the 20 best starts x ends of every window, at most 30 tokens long.

Budget (2-core CPU): a window averages ~178 tokens, about 7 windows/s of full fine-tuning, so one epoch over a
1,000-question subset (~1,030 windows, 65 steps at batch 16) takes ~2.5 min per method. The checkpoint is selected on
496 other questions of validation.json (10 %; they share articles with the training questions, never with test.json);
500 of the 5,609 test questions are scored once after training (~20 s). Subsets are drawn with the data seed. That is about 1 % of SQuAD's usual 88k training questions
for one epoch: read the scores as "what 1,000 questions buy", not as converged SQuAD results (MiniLM-class
models reach F1 ~75-80 with the full training set). More: --set data.train_limit=None --set data.eval_limit=None.

Offline: $PEFTLAB_DATA_DIR/squad_v1.1/{validation,test}.json (official SQuAD JSON). Online (Hub rajpurkar/squad):
--set data.train_split=train --set data.eval_split=validation.
"""

from peftlab import Data, FullFineTuning, Model, Recipe, Train

recipe = Recipe(
    name="squad_base",
    model=Model("sentence-transformers/all-MiniLM-L6-v2", task="qa", dropout=0.0),
    data=Data("squad_v1.1", text="question", text_pair="context", label="answers", max_length=384, stride=128,
              max_answer_length=30, n_best=20, train_split="validation", eval_split="test", train_limit=1000,
              eval_limit=500),
    method=FullFineTuning(),
    train=Train(epochs=1, lr=5e-4, batch_size=16, eval_batch_size=64, warmup_ratio=0.06, weight_decay=0.01, seed=0),
)

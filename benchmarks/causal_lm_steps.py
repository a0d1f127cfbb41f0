"""Seconds per training step and generation speed of SmolLM2-135M-Instruct on real GSM8K batches, per method.

    flock /tmp/peftlab-cpu.lock python benchmarks/causal_lm_steps.py [--batch 8] [--steps 3]

Used to size recipes/*_gsm8k.py to a time budget. Prints one line per measurement; numbers are from this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's peftlab, whatever is installed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--generate", type=int, default=16, help="prompts in one generation batch")
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args()

    from datasets import Dataset

    from peftlab import LoRA, Quant4bit, load_recipe, models
    from peftlab.building import build_model
    from peftlab.tasks import causal_lm

    recipe = load_recipe(REPO / "recipes" / "gsm8k_base.py")
    resolved = models.resolve(recipe.model.name)
    tokenizer = models.load_tokenizer(resolved, recipe.model)
    rows = [json.loads(line) for line in open(Path(os.environ["PEFTLAB_DATA_DIR"]) / "gsm8k" / "train.jsonl")][:64]
    features = causal_lm.prepare(Dataset.from_list(rows), tokenizer, recipe, [], "train")
    batch = causal_lm.collator(tokenizer)([{k: f[k] for k in ("input_ids", "labels")} for f in features.select(range(args.batch))])
    tokens = int(batch["attention_mask"].sum())
    print(f"batch {tuple(batch['input_ids'].shape)}, {tokens} tokens, threads {torch.get_num_threads()}", flush=True)

    variants = {"full": recipe, "lora-all-linear-r16": replace(recipe, method=LoRA(r=16, alpha=32, dropout=0.0, target="all-linear")),
                "qlora-all-linear-r16": replace(recipe, method=LoRA(r=16, alpha=32, dropout=0.0, target="all-linear"), quant=Quant4bit())}
    for name, variant in variants.items():
        model = build_model(variant, causal_lm, resolved, [])
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        model.train()
        times = []
        for _ in range(args.steps + 1):  # the first step warms up
            start = time.perf_counter()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - start)
        step = sum(times[1:]) / args.steps
        print(f"{name}: {step:.2f} s/step, {tokens / step:.0f} tokens/s; peak RSS so far "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB", flush=True)
        if name != "full":
            prompts = [causal_lm.prompt_text(tokenizer, recipe.data, r) for r in rows[:args.generate]]
            start = time.perf_counter()
            texts, generated = causal_lm.generate(model, tokenizer, prompts, args.new_tokens, batch_size=args.generate)
            seconds = time.perf_counter() - start
            print(f"{name}: generation of {args.generate} prompts x <= {args.new_tokens} tokens: {generated} tokens in "
                  f"{seconds:.1f} s = {generated / seconds:.1f} tokens/s", flush=True)
        del model, optimizer


if __name__ == "__main__":
    main()

"""Causal language modelling (instruction tuning of a decoder LM): prompt -> response, loss on the responses only.

Each row holds a prompt (data.text) and its response (data.label), or, with data.chat_format, an instruction or a
conversation in the alpaca, sharegpt or OpenAI messages shape (peftlab/chat.py). The row is rendered with the
tokenizer's chat template (prompt as a user turn, response as the assistant turn), or with data.prompt_template (a
str.format template over the row's columns; the response then ends with the tokenizer's eos token). The prompts and
the responses are tokenized apart, a prompt exactly as generation later sees it, and every token outside the
responses is labelled -100: the loss and the perplexity count the assistant turns only, each with its end-of-turn
token (so the model learns to stop), every assistant turn of a multi-turn conversation.
Examples longer than data.max_length tokens are left out, not cut: a cut-off worked solution would teach the model
to stop before its final answer. How many were left out is printed.

Packing (data.packing): consecutive examples share a row of up to max_length tokens. Their position ids restart at
0 and the batch carries no attention mask and use_cache=False; transformers then builds a block-diagonal causal
mask from the position resets (masking_utils.find_packed_sequence_indices), so no example attends to another. It
does so only without a key-value cache, and Llama-style models make one whenever config.use_cache is on, in
training too: without use_cache=False the packed examples would silently attend to each other. The first label of
each example is -100, so no loss crosses a boundary. Padding gets its own position run, a segment of its own.
(transformers' DataCollatorWithFlattening packs a whole batch into one row instead: attention over the full batch
length, quadratic in it, which on a CPU costs more than the padding it saves.)

Evaluation: validation loss and perplexity = exp(mean negative log-likelihood per response token). Trainer's
eval_loss averages per-batch means; the perplexity is computed from summed token NLLs instead, and
`preprocess_logits` reduces each batch's logits to (NLL sum, token count) per example so the vocabulary-sized
logits are never gathered (in training and evaluation the output layer runs on the labelled positions only:
levers.labelled_nll, which yields those per-example sums directly). Generation: greedy, batched with left padding, on
data.generate_limit rows of data.generate_split (drawn with the data seed, data.load_splits), each answering its row's
last assistant turn (a conversation up to it is the prompt); exact match of the final numeric answer (see
`final_number`) against that turn, for the base model before training and for the trained model after.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from pathlib import Path

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import AutoModelForCausalLM, DynamicCache, StoppingCriteria, StoppingCriteriaList

from .. import chat, levers, measure, rundir, speed
from ..data import require_columns
from ..errors import PeftlabError, check
from ..evaluation import evaluate

MODEL_CLASS = AutoModelForCausalLM
PEFT_TASK_TYPE = "CAUSAL_LM"
BEST_METRIC = "perplexity"  # checkpoint selection: lower is better
GREATER_IS_BETTER = False
LOSS_OVER_ITEMS = True  # the model's loss divides by Trainer's count of labelled tokens (training.training_arguments)
LABELLED_LOGITS = True  # output layer and loss on the labelled positions only (levers.labelled_nll)
RAW_METRICS = ("perplexity", "nll_per_token")  # not fractions: shown as they are, not as percentages
# The output layer is pretrained (tied to the input embeddings in SmolLM2), not a new task head: it stays frozen,
# is not adapted by LoRA ("all-linear" leaves the output layer out), is not saved with adapters, and stays in full
# precision on a 4-bit/8-bit base (quantizing it would also quantize the tied embeddings).
HEADS = ()
UNQUANTIZED = ("lm_head",)
IGNORE = -100

# ------------------------------------------------------------------------------------------ final answers

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
MARKER = "####"


def _canonical(number: str) -> str | None:
    try:
        value = Decimal(number.replace(",", "")).normalize()
    except InvalidOperation:
        return None
    return format(value, "f")  # "18.00" -> "18", "1,000" -> "1000"; Decimal keeps "0.1" exact


def final_number(text: str) -> str | None:
    """The final numeric answer of a GSM8K-style solution, canonical ("1,000.50" -> "1000.5"), or None.

    Rule: the first number after the last "####" if the text has one (GSM8K's answer format); otherwise the last
    number anywhere in the text (what a model that never learnt the format usually ends with, as in lm-eval's
    "flexible extract"). "$", "%" and thousands commas are ignored; numbers compare by value (18.00 == 18)."""
    if MARKER in text:
        found = NUMBER.search(text.rsplit(MARKER, 1)[1])
        return _canonical(found.group()) if found else None
    found = NUMBER.findall(text)
    return _canonical(found[-1]) if found else None


# ------------------------------------------------------------------------------------------- interface

def columns(recipe) -> list[str]:
    return chat.columns(recipe.data)


def labels(recipe, train) -> list[str]:
    require_columns(train, columns(recipe), "train")
    return []  # text, not classes


def model_kwargs(label_names: list[str]) -> dict:
    return {}


def _template_prompt(data, row: dict) -> str:
    try:
        return data.prompt_template.format_map(row)
    except (KeyError, IndexError) as err:
        raise PeftlabError(f"data.prompt_template={data.prompt_template!r} names {err}, which is not a column "
                           f"({', '.join(row)}); fix the template") from None


def prompt_text(tokenizer, data, row: dict) -> str:
    """The prompt of a prompt/response row (no chat_format) as the model sees it, ending where the response begins."""
    if data.prompt_template is not None:
        return _template_prompt(data, row)
    return chat.generation_prompt(tokenizer, [{"role": "user", "content": row[data.text]}])


def pieces(tokenizer, data, row: dict, where: str) -> list[tuple[str, bool]]:
    """The example as text pieces, True on those the loss counts: each response as the template closes it."""
    conversation = [turn | {"content": re.sub(data.strip_regex, "", turn["content"])}
                    if data.strip_regex and turn["role"] == "assistant" else turn
                    for turn in chat.messages(row, data, where)]
    if data.prompt_template is None:
        return chat.render(tokenizer, conversation, where)
    check(tokenizer.eos_token is not None, "the tokenizer has no eos token to end responses with; add one")
    return [(_template_prompt(data, row), False), (conversation[-1]["content"] + tokenizer.eos_token, True)]


def prepare(dataset, tokenizer, recipe, label_names: list[str], split: str):
    """Pieces tokenized apart (a prompt exactly as generation later sees it), labels -100 outside the responses."""
    data = recipe.data
    require_columns(dataset, columns(recipe), split)

    def encode(batch, indices):
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        out = {"input_ids": [], "labels": [], "length": [], "example_id": indices}
        for row, index in zip(rows, indices):
            ids, labels_ = [], []
            for text, trained in pieces(tokenizer, data, row, f"{split} split, row {index}"):
                piece = tokenizer(text, add_special_tokens=False)["input_ids"]
                ids += piece
                labels_ += piece if trained else [IGNORE] * len(piece)
            out["input_ids"].append(ids)
            out["labels"].append(labels_)
            out["length"].append(len(ids))
        return out

    encoded = dataset.map(encode, batched=True, with_indices=True, remove_columns=dataset.column_names,
                          desc=f"tokenizing {split}")
    kept = encoded.filter(lambda n: n <= data.max_length, input_columns="length")
    check(len(kept) > 0, f"{split} split: every example is longer than data.max_length={data.max_length} tokens; "
                         "raise max_length")
    if len(kept) < len(encoded):
        print(f"{split} split: {len(encoded) - len(kept)} of {len(encoded)} examples are longer than "
              f"data.max_length={data.max_length} tokens and were left out", flush=True)
    # evaluation splits stay one example per row: their records are per example (packing them would change no score)
    return pack(kept, data.max_length) if data.packing and split == "train" else kept


def pack(features, max_length: int):
    """Consecutive examples concatenated into rows of at most max_length tokens, position ids restarting at 0."""
    def pack_batch(batch):
        rows = {"input_ids": [], "labels": [], "position_ids": [], "length": []}
        ids, labels_, positions = [], [], []
        for x, y in zip(batch["input_ids"], batch["labels"]):
            if ids and len(ids) + len(x) > max_length:
                for key, value in zip(rows, (ids, labels_, positions, len(ids))):
                    rows[key].append(value)
                ids, labels_, positions = [], [], []
            ids, labels_, positions = ids + x, labels_ + [IGNORE] + y[1:], positions + list(range(len(x)))
        if ids:
            for key, value in zip(rows, (ids, labels_, positions, len(ids))):
                rows[key].append(value)
        return rows

    return features.map(pack_batch, batched=True, batch_size=1000, remove_columns=features.column_names,
                        desc="packing")


def collator(tokenizer):
    """Right padding: labels -100; unpacked rows get an attention mask, packed rows a position run for the padding
    (a segment of its own), no mask and no cache, which is what makes transformers keep the packed examples apart."""
    pad_id = tokenizer.pad_token_id

    def collate(features):
        longest = max(len(f["input_ids"]) for f in features)
        packed = "position_ids" in features[0]
        batch = {"input_ids": [], "labels": [], "position_ids" if packed else "attention_mask": []}
        for f in features:
            n, pad = len(f["input_ids"]), longest - len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [pad_id] * pad)
            if "labels" in f:
                batch["labels"].append(list(f["labels"]) + [IGNORE] * pad)
            if packed:
                batch["position_ids"].append(list(f["position_ids"]) + list(range(pad)))
            else:
                batch["attention_mask"].append([1] * n + [0] * pad)
        tensors = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items() if v}
        return tensors | {"use_cache": False} if packed else tensors

    return collate


def preprocess_logits(logits, labels):
    """Per example: (summed NLL of its response tokens, their count). Trainer keeps these instead of the logits."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    targets = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE,
                                            reduction="none")
    counted = targets != IGNORE
    return torch.stack([(nll * counted).sum(1), counted.sum(1).float()], dim=1)


def records_for(eval_ds, raw_eval, label_names: list[str], recipe=None):
    """Per-example records (see tasks/__init__.py): each example's summed response-token NLL and token count."""
    example_ids = eval_ds["example_id"]

    def records(eval_pred) -> list[dict]:
        sums = eval_pred.predictions
        return sorted(({"kind": "perplexity", "id": e, "nll": float(nll), "tokens": int(tokens)}
                       for e, (nll, tokens) in zip(example_ids, sums)), key=lambda r: r["id"])

    return records


def score_predictions(records: list[dict]) -> dict:
    """Perplexity from summed NLL / summed tokens (perplexity records), exact match (generation records)."""
    scores = {}
    sums = [(r["nll"], r["tokens"]) for r in records if r["kind"] == "perplexity"]
    if sums:
        nll = sum(s[0] for s in sums) / max(sum(s[1] for s in sums), 1)
        scores |= {"nll_per_token": nll, "perplexity": math.exp(nll)}
    exact = [r["exact"] for r in records if r["kind"] == "generation"]
    if exact:
        scores["exact_match"] = sum(exact) / len(exact)
    return scores


# ------------------------------------------------------------------------------------------- generation

class StopAt(StoppingCriteria):
    """Ends each sequence once its generated text holds one of the stop strings. Written here rather than
    transformers' stop_strings (StopStringCriteria): that one works out from the vocabulary how each token's text
    could end a stop string, which fails on tokenizers whose tokens do not decode on their own (a WordLevel
    vocabulary: "substring not found"); decoding the new tokens each step works with any tokenizer and costs
    little next to a forward pass."""

    def __init__(self, tokenizer, stop: list[str], prompt_length: int):
        self.tokenizer, self.stop, self.prompt_length = tokenizer, stop, prompt_length

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        return torch.tensor([any(s in text for s in self.stop) for text in texts], device=input_ids.device)


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 16,
             temperature: float = 0.0, stop: list[str] | None = None, streamer=None) -> tuple[list[str], int]:
    """Continuations of the prompts (special tokens removed) and the number of tokens generated (up to and including
    each end-of-sequence token). Greedy unless temperature > 0. `stop`: strings that end a generation too (StopAt;
    the text keeps them); `streamer`: a transformers streamer that sees the tokens as they come (one prompt at a
    time)."""
    texts, counts = generate_counted(model, tokenizer, prompts, max_new_tokens, batch_size, temperature, stop, streamer)
    return texts, sum(counts)


def _prunable(model, temperature: float, stop, streamer) -> bool:
    """greedy_pruned applies: greedy, no stop strings or streamer (transformers' generate serves those), and no
    virtual tokens or prefixes (peft's prompt learning feeds them through generate's own input preparation)."""
    config = getattr(model, "active_peft_config", None)
    return temperature == 0 and not stop and streamer is None and not getattr(config, "is_prompt_learning", False)


def greedy_pruned(model, encoded: dict, max_new_tokens: int, eos: int) -> list[list[int]]:
    """Greedy decoding with the key-value cache that drops each row from the batch once it has produced its
    end-of-sequence token: every step computes only the rows still generating. Written here because transformers'
    generate keeps a finished row in the batch until the longest answer ends (a fine-tuned model's short answers then
    cost as much as the longest), and its continuous batching (generate_batch) attends, on a CPU, over every request's
    cache through one dense mask. Positions follow the left padding as generate computes them, so the tokens are
    generate's. Each row's tokens end with its end-of-sequence token, if it produced one."""
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    rows, cache = torch.arange(len(ids)), DynamicCache(config=model.config)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
                logits_to_keep=1)
    tokens: list[list[int]] = [[] for _ in range(len(ids))]
    for step in range(max_new_tokens):
        chosen = out.logits[:, -1].argmax(-1)
        for row, token in zip(rows.tolist(), chosen.tolist()):
            tokens[row].append(token)
        going = chosen != eos
        if step + 1 == max_new_tokens or not going.any():
            break
        if not going.all():
            keep = going.nonzero()[:, 0]
            cache.batch_select_indices(keep)
            rows, mask, chosen, positions = rows[keep], mask[keep], chosen[keep], positions[keep]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=positions, past_key_values=cache,
                    use_cache=True)
    return tokens


@torch.no_grad()
def generate_counted(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 16,
                     temperature: float = 0.0, stop: list[str] | None = None, streamer=None,
                     prune: bool = True) -> tuple[list[str], list[int]]:
    """generate(), with the tokens generated for each prompt. Batches of prompts of similar token length (sorted by
    it: a batch pads to its longest prompt, on the left), the outputs put back in the prompts' order. Greedy
    generation drops finished rows as it goes (greedy_pruned); sampling, stop strings, streaming and prompt learning
    go through transformers' generate, whose rows run until the batch's longest answer ends (prune=False: always,
    for measuring the difference)."""
    model.eval()
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lengths.__getitem__)
    texts, counts = [""] * len(prompts), [0] * len(prompts)
    eos = tokenizer.eos_token_id
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    sampling |= {"streamer": streamer} if streamer is not None else {}
    prunable = prune and eos is not None and _prunable(model, temperature, stop, streamer)
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        encoded = tokenizer([prompts[i] for i in chosen], add_special_tokens=False, padding=True, padding_side="left",
                            return_token_type_ids=False, return_tensors="pt").to(model.device)
        if prunable:
            new = greedy_pruned(model, encoded, max_new_tokens, eos)
        else:
            stopping = StoppingCriteriaList([StopAt(tokenizer, stop, encoded["input_ids"].shape[1])] if stop else [])
            out = model.generate(**encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=eos, use_cache=True, stopping_criteria=stopping, **sampling)
            new = out[:, encoded["input_ids"].shape[1]:].tolist()
        new = [row[:row.index(eos) + 1] if eos in row else row for row in new]  # up to and with its end
        for i, text, row in zip(chosen, tokenizer.batch_decode(new, skip_special_tokens=True), new):
            texts[i], counts[i] = text, len(row)
    return texts, counts


@contextmanager
def adapter_merged(model, merge: bool = True):
    """Within: the model's peft adapter folded into its base weights (peft's merge_adapter), taken out again after
    (unmerge_adapter), so generation runs plain linear layers; yields whether it merged. An unmerged LoRA computes
    its two small matmuls, each a separate kernel call, beside every adapted projection at every generated token
    (reports/bench_causal_lm.md measures what that costs). Not into a 4/8-bit base (rounding there changes the model,
    export.py), nor for prompt learning or bottleneck adapters (nothing linear to fold), nor when
    PEFTLAB_DISABLE=merged_generation. Unmerging subtracts what merging added: the base weights come back up to
    float rounding (the adapter's own weights, which a run saves, are untouched)."""
    config = getattr(model, "active_peft_config", None)
    foldable = (merge and config is not None and not config.is_prompt_learning and speed.enabled("merged_generation")
                and measure.quantized_storage(model) is None
                and not any(layer.merged for layer in model.modules() if isinstance(layer, BaseTunerLayer)))
    if not foldable:
        yield False
        return
    model.merge_adapter()
    try:
        yield True
    finally:
        model.unmerge_adapter()


def generation_case(tokenizer, data, row: dict, where: str) -> tuple[str, str, str]:
    """(prompt, question, reference reply) of a row: generation answers its last assistant turn."""
    if data.chat_format is None:
        return prompt_text(tokenizer, data, row), row[data.text], row[data.label]
    context, reply = chat.last_exchange(chat.messages(row, data, where))
    return chat.generation_prompt(tokenizer, context, where), context[-1]["content"], reply


def generation_eval(model, tokenizer, recipe, rows) -> dict:
    """Greedy answers to the generation prompts, their final numbers, exact match and speed."""
    data = recipe.data
    cases = [generation_case(tokenizer, data, row, f"{data.generate_split} split, row {i}") for i, row in enumerate(rows)]
    prompts, questions, references = zip(*cases) if cases else ((), (), ())
    references = [final_number(reply) for reply in references]
    missing = [i for i, r in enumerate(references) if r is None]
    check(not missing, f"{data.generate_split} split, row {missing[0] if missing else ''}: the reference has no final "
                       "number; exact match needs numeric answers (set data.generate_split=None for other data)")
    started = time.perf_counter()
    with adapter_merged(model):
        texts, generated = generate(model, tokenizer, prompts, data.max_new_tokens, levers.generation_batch_size(recipe))
    seconds = time.perf_counter() - started
    answers = [final_number(t) for t in texts]
    correct = [a == r for a, r in zip(answers, references)]
    return {"exact_match": sum(correct) / len(correct), "new_tokens": generated, "seconds": seconds,
            "tokens_per_second": generated / max(seconds, 1e-9),
            "outputs": [{"question": question, "reference": ref, "generation": text, "answer": answer, "correct": ok}
                        for question, ref, text, answer, ok in zip(questions, references, texts, answers, correct)]}


class Evaluation:
    """What run.py records beyond Trainer's evaluations: the base model's perplexity and exact match before
    training (on the base as loaded, quantized if the recipe quantizes it, before any adapter exists), and the
    trained model's exact match after, on the same generation prompts."""

    SAMPLES = 3  # generations shown in the report; all of them go to generations.json

    def __init__(self, inputs, recipe, base_cache: Path | None = None):
        self.inputs, self.recipe = inputs, recipe
        self.rows = list(inputs.splits.generate) if inputs.splits.generate is not None else []
        self.before_metrics, self.before_gen, self.after_gen = {}, None, None
        self.base_cache, self.cached, self.reused = base_cache, None, False

    def _cache_file(self, folder: Path | None, layers: int) -> Path | None:
        """The base's figures depend on its weights and quantization, the examples scored and prompted and the
        settings that score them; not on the method, learning rate or training seed. Variants of a comparison share
        them (compare passes --base-cache): one file per such key. None where the weights have no fingerprint."""
        from .. import models, speed
        from ..recipe import recipe_to_dict

        fingerprint = models.weights_fingerprint(self.inputs.resolved) if folder is not None else None
        if fingerprint is None:
            return None
        settings = recipe_to_dict(self.recipe)
        key = {"weights": fingerprint, **{k: settings[k] for k in ("model", "quant", "data")},
               "ids": {k: list(v) for k, v in self.inputs.splits.ids.items() if k in ("eval", "generation")},
               "bf16": speed.use_bf16(self.recipe), "generation_batch": levers.generation_batch_size(self.recipe),
               "eval_batch": levers.eval_batch_size(self.recipe, layers)}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return Path(folder) / f"base-{digest}.json"

    def before(self, base) -> None:
        self.cached = self._cache_file(self.base_cache, getattr(base.config, "num_hidden_layers", 1))
        if self.cached is not None and self.cached.is_file():
            record = rundir.read_json(self.cached)
            self.before_metrics, self.before_gen, self.reused = record["metrics"], record["generation"], True
            return
        self._score_base(base)
        if self.cached is not None:
            rundir.write_json(self.cached, {"metrics": self.before_metrics, "generation": self.before_gen})

    def _score_base(self, base) -> None:
        inputs = self.inputs
        self.before_metrics = evaluate(base, self.recipe, inputs.task, inputs.tokenizer, inputs.labels,
                                       inputs.splits.eval, inputs.eval)
        # accelerate marks the model it prepared for that evaluation and will not prepare it again: the base (and
        # peft's wrapper, which inherits the mark) would then train without DistributedDataParallel in a
        # multi-process run, each process on its own gradients (tests/test_distributed.py guards this).
        vars(base).pop("_is_accelerate_prepared", None)
        if self.rows:
            self.before_gen = generation_eval(base, inputs.tokenizer, self.recipe, self.rows)
            self.before_metrics["exact_match"] = self.before_gen["exact_match"]

    def after(self, model) -> None:
        if self.rows:
            self.after_gen = generation_eval(model, self.inputs.tokenizer, self.recipe, self.rows)

    def task_metrics(self) -> dict:
        return {"exact_match": self.after_gen["exact_match"]} if self.after_gen else {}

    def records(self) -> list[dict]:
        """The trained model's generations as predictions.jsonl records; ids: rows of the generation split."""
        if not self.after_gen:
            return []
        return [{"kind": "generation", "id": i, "gold": o["reference"], "prediction": o["answer"],
                 "exact": o["correct"], "generation": o["generation"]}
                for i, o in zip(self.inputs.splits.ids["generation"], self.after_gen["outputs"])]

    def record(self, run_dir: Path) -> dict:
        """Written to generations.json (every output); returned for metrics.json (figures and a few samples)."""
        out = {"before": self.before_metrics} | ({"before_reused_from": str(self.cached)} if self.reused else {})
        if self.after_gen:
            before, after = self.before_gen, self.after_gen
            rundir.write_json(run_dir / "generations.json", {"before": before["outputs"], "after": after["outputs"]})
            out["generation"] = {
                "split": self.recipe.data.generate_split, "prompts": len(self.rows),
                "max_new_tokens": self.recipe.data.max_new_tokens, "decoding": "greedy",
                "batch_size": levers.generation_batch_size(self.recipe),
                **{f"{key}_{when}": gen[key] for when, gen in (("before", before), ("after", after))
                   for key in ("new_tokens", "seconds", "tokens_per_second")},
                "samples": [{**a, "generation_before": b["generation"], "answer_before": b["answer"],
                             "correct_before": b["correct"]}
                            for b, a in zip(before["outputs"][:self.SAMPLES], after["outputs"][:self.SAMPLES])],
            }
        return out


@torch.no_grad()
def predict(model, tokenizer, texts: list[str], label_names: list[str], max_length: int = 512, data=None,
            max_new_tokens: int = 256, temperature: float = 0.0) -> list[dict]:
    """Generate a response to each prompt text, rendered as in training (chat template or data.prompt_template)."""
    check(temperature >= 0, f"--temperature={temperature}: use 0 for greedy decoding or a positive value to sample")
    check(max_new_tokens >= 1, f"--max-new-tokens={max_new_tokens}: use a positive count")
    check(all(t.strip() for t in texts), "empty prompt: give the question or instruction to answer")
    prompts = [prompt_text(tokenizer, data, {data.text: t}) for t in texts]  # one user turn, whatever the chat_format
    outputs, _ = generate(model, tokenizer, prompts, max_new_tokens, temperature=temperature)
    return [{"prompt": t, "generation": o, "final_number": final_number(o)} for t, o in zip(texts, outputs)]

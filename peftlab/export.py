"""Folding a run's adapter into the base weights and exporting a model that plain transformers loads, verified
against the adapter as trained (python -m peftlab.merge is the command).

The merge always goes into a fresh full-precision base, never into 4-bit/8-bit weights (peft #2321,
transformers #31293: rounding there destroys quality). Verification is part of the export: logits of
the adapter model as trained vs the export on the longest validation examples and others at random, over real
(not padded) positions: max |Δlogit|, and label agreement or, for regression, max |Δ score|; and the export's own
validation score."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from . import rundir
from .artifacts import EXPORT_RECORD, load_trained
from .data import title
from .errors import PeftlabError, check
from .evaluation import eval_inputs, evaluate_split
from .methods import METHODS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PEFT_KEY_MARKERS = ("lora_", "base_layer", "modules_to_save", "original_module", "ia3_", "magnitude")


def merged_model(run_dir: Path, dtype: torch.dtype):
    """Base in full precision + the run's weights, merged into plain transformers modules."""
    trained = load_trained(run_dir, quantized=False)
    if not hasattr(trained.model, "merge_and_unload"):  # full fine-tuning: the weights are the model already
        return trained, trained.model.to(dtype)
    try:  # safe_merge: peft checks the merged weights for NaN before they replace the base's
        model = trained.model.merge_and_unload(safe_merge=True)
    except ValueError as err:
        if "NaN" not in str(err):
            raise
        raise PeftlabError(f"run {run_dir}: {str(err).strip().splitlines()[0]}; the adapter cannot be exported, "
                           "rerun the recipe (a lower train.lr keeps the weights finite)") from None
    return trained, model.to(dtype)


def verification_examples(examples, n: int):
    """The longest n - n//2 examples and n//2 others at random (seeded), in dataset order. Evaluation features come
    sorted by length, so the first n would be the shortest, where position-dependent differences show least."""
    if len(examples) <= n:
        return examples
    lengths = torch.tensor([len(ids) for ids in examples["input_ids"]])
    longest = torch.argsort(lengths, descending=True, stable=True)[:n - n // 2].tolist()
    rest = [i for i in torch.randperm(len(examples), generator=torch.Generator().manual_seed(0)).tolist()
            if i not in set(longest)]
    return examples.select(sorted(longest + rest[:n // 2]))


@torch.no_grad()
def compare_logits(reference, export, tokenizer, task, examples) -> dict:
    """How far the export's outputs are from the model as trained, on the same batches (float32 maths), over real
    positions only (padding is masked): max |Δlogit|, and per task either the agreement of the predicted label (per
    example, per token, or per answer start/end) or, for a single output per example (regression), max |Δ score|."""
    collate = task.collator(tokenizer)
    max_diff, agree, total, single_output = 0.0, 0, 0, False
    for start in range(0, len(examples), 32):
        batch = collate([{k: v for k, v in ex.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                         for ex in examples.select(range(start, min(start + 32, len(examples))))])
        a, b = (_real_outputs(model(**batch), batch["attention_mask"]) for model in (reference, export))
        max_diff = max(max_diff, (a - b).abs().max().item())
        single_output = a.shape[-1] == 1
        agree += (a.argmax(-1) == b.argmax(-1)).sum().item()
        total += a.shape[0]
    measure = {"max_abs_score_diff": max_diff} if single_output else {"label_agreement": agree / total}
    return {"max_abs_logit_diff": max_diff, **measure, "compared_examples": len(examples),
            "longest_compared_tokens": max(len(ids) for ids in examples["input_ids"])}


def _real_outputs(output, mask: torch.Tensor) -> torch.Tensor:
    """One row of outputs per prediction, padded positions left out: [examples, classes] for a sequence head,
    [real tokens, classes] for token and causal-LM heads; for extractive QA one row of start and one of end logits
    per example, padded positions at the lowest float in both (never the argmax, no difference)."""
    if getattr(output, "logits", None) is None:
        spans = torch.stack([output.start_logits, output.end_logits], dim=1).float()
        return spans.masked_fill(~mask.bool()[:, None, :], torch.finfo(spans.dtype).min).flatten(0, 1)
    logits = output.logits.float()
    return logits[mask.bool()] if logits.dim() == 3 else logits


def agreement(verification: dict) -> str:
    """The per-task measure of a verification, in words."""
    if "max_abs_score_diff" in verification:
        return f"their scores differ by at most {verification['max_abs_score_diff']:.3g}"
    return f"they agree on {100 * verification['label_agreement']:.2f} % of predicted labels"


def peft_keys(state_dict) -> list[str]:
    return [k for k in state_dict if any(marker in k for marker in PEFT_KEY_MARKERS)]


def model_card(trained, record: dict) -> str:
    recipe, metrics = trained.recipe, rundir.read_json(trained.run_dir / "metrics.json")
    v = record["verification"]
    quant = recipe.quant.kind + " base" if recipe.quant else "full-precision base"
    lines = [
        f"# {recipe.name} (merged export)",
        "",
        f"- Base model: `{recipe.model.name}` (weights sha256 `{record['base_fingerprint']}`)",
        f"- Method: {recipe.method.kind}, trained on a {quant}; merged into the full-precision base, saved as {record['dtype']}",
        f"- Task: {recipe.model.task}, labels {trained.labels}",
        f"- Data: {title(recipe.data.name, recipe.data.files)}, validation split `{recipe.data.eval_split}`",
        f"- Run: `{trained.run_dir.name}`; validation {', '.join(f'{k} {v:.4f}' for k, v in metrics['task_metrics'].items())}",
        "",
        "## How this export was made and checked",
        "",
        f"`{record['command']}` loaded the base in full precision, applied the adapter, merged it with peft's",
        "`merge_and_unload`, and saved plain transformers weights (no peft needed to load them).",
        f"On {v['compared_examples']} validation examples (the longest and others at random) the adapter model as",
        f"trained and this export differ by at most {v['max_abs_logit_diff']:.3g} in a logit; {agreement(v)}.",
        f"Export on the reported split: {', '.join(f'{k} {x:.4f}' for k, x in record['export_metrics'].items())}.",
    ]
    if recipe.quant:
        lines += ["", "The adapter was trained on a quantized base, so the full-precision export is not bit-identical",
                  "to the model as trained: the difference above is real and expected."]
    auto = trained.task.MODEL_CLASS.__name__
    lines += ["", "```python", f"from transformers import {auto}, AutoTokenizer",
              f"model = {auto}.from_pretrained(\"<this folder>\")",
              "tokenizer = AutoTokenizer.from_pretrained(\"<this folder>\")", "```"]
    return "\n".join(lines) + "\n"


def export(run_dir: Path, out: Path, dtype_name: str, data_root, n_compare: int, command: str) -> dict:
    run_dir = rundir.require_finished(run_dir)
    recipe = rundir.read_json(run_dir / "recipe.json")
    method = METHODS[recipe["method"]["kind"]]
    check(method.mergeable or method.kind == "full",
          f"{method.__name__} adapters cannot be merged into the base weights; use the run directory as it is "
          f"(python -m peftlab.predict {run_dir}, or PeftModel/peftlab loading of {run_dir}/adapter onto the base)")
    check(not recipe["model"].get("head"), "the run has an MLP head, which plain transformers cannot load (no head "
          f"class for it): an export would come back with a random linear head; use the run directory "
          f"(python -m peftlab.predict {run_dir})")
    check(not out.exists(), f"{out} already exists: remove it or choose another --out")
    check(out.parent.is_dir(), f"--out {out}: the folder {out.parent} does not exist; create it first or choose "
                               "another --out")

    reference = load_trained(run_dir)  # base (quantized if it was) + adapter: the model as trained
    trained, merged = merged_model(run_dir, DTYPES[dtype_name])
    leftover = peft_keys(merged.state_dict())
    check(not leftover, f"merge left peft modules behind ({leftover[:3]}); this method cannot be exported")

    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        merged.save_pretrained(tmp)
        trained.tokenizer.save_pretrained(tmp)
        plain = type(merged).from_pretrained(tmp, dtype=DTYPES[dtype_name]).eval()  # as a user would load it
        prepared = eval_inputs(trained, data_root)  # read and tokenized once: logit check and scoring
        examples = prepared[1]
        verification = compare_logits(reference.model, plain, trained.tokenizer, trained.task,
                                      verification_examples(examples, n_compare))
        reference.model = plain  # evaluate the export the same way a run is evaluated
        record = {"source_run": str(run_dir), "dtype": dtype_name, "command": command, "verification": verification,
                  "export_metrics": evaluate_split(reference, data_root, prepared),
                  "run_metrics": rundir.read_json(run_dir / "metrics.json")["task_metrics"],
                  "trained_on_quantized_base": trained.recipe.quant is not None,
                  "base_fingerprint": rundir.read_json(run_dir / "environment.json")["model"]["fingerprint"]}
        rundir.write_json(tmp / EXPORT_RECORD, record | {"recipe": recipe, "labels": trained.labels})
        rundir.write_atomic(tmp / "README.md", model_card(trained, record))
        tmp.rename(out)  # only a complete, verified export ever carries the final name
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record

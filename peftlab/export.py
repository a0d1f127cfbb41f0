"""Folding a run's adapter into the base weights and exporting a model that plain transformers loads, verified
against the adapter as trained (python -m peftlab.merge is the command).

The merge never goes into 4-bit/8-bit weights (peft #2321, transformers #31293: rounding there destroys quality).
It goes into float weights of one of two bases: the base's original full-precision weights (`original`, the
default), or, for a run trained on a quantized base, that base as the adapter saw it, its quantized weights
de-quantized to float (`dequantized`): the first puts back the precision quantization removed, which the adapter
never saw; the second reproduces the model as trained up to float rounding (bitsandbytes' 8-bit layers also
quantize activations, so there only approximately). For such a run both are built and measured, one is written.
Verification is part of the export: logits of the adapter model as trained vs the export on the longest validation
examples and others at random, over real (not padded) positions: max |Δlogit|, and label agreement or, for
regression, max |Δ score|; and the export's own validation score."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from . import data as data_stage
from . import measure, rundir
from .artifacts import EXPORT_RECORD, load_trained
from .data import title
from .errors import PeftlabError, check
from .evaluation import eval_inputs, evaluate_split
from .methods import METHODS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PEFT_KEY_MARKERS = ("lora_", "base_layer", "modules_to_save", "original_module", "ia3_", "magnitude")
BASES = ("original", "dequantized")  # what the adapter is merged into (artifacts.load_trained's base)


def merged_model(run_dir: Path, dtype: torch.dtype, base: str = "original"):
    """A float base (BASES) + the run's weights, merged into plain transformers modules."""
    trained = load_trained(run_dir, base=base)
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


def _scores(metrics: dict) -> str:
    return ", ".join(f"{k} {x:.4f}" for k, x in metrics.items())


BASE_WORDS = {"original": "the base's original full-precision weights",
              "dequantized": "the quantized base as training saw it, de-quantized to float"}


def _made_with(env: dict | None) -> list[str]:
    if not env:
        return []
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    return [f"Made on {env['cpu']} ({env['cpu_count']} cores), GPU: {env['gpu'] or 'none'}; {versions}; peftlab "
            f"commit {env.get('peftlab_commit')}."]


def model_card(trained, record: dict) -> str:
    recipe, metrics = trained.recipe, rundir.read_json(trained.run_dir / "metrics.json")
    v, base = record["verification"], record["base"]
    quant = recipe.quant.kind + " base" if recipe.quant else "full-precision base"
    loaded = ("loaded the base in full precision" if base == "original" else
              f"loaded the base quantized ({recipe.quant.kind}) as in training, de-quantized it with transformers' "
              "`dequantize`")
    lines = [
        f"# {recipe.name} (merged export)",
        "",
        f"- Base model: `{recipe.model.name}` (weights sha256 `{record['base_fingerprint']}`)",
        f"- Method: {recipe.method.kind}, trained on a {quant}; merged into {BASE_WORDS[base]}, saved as {record['dtype']}",
        f"- Task: {recipe.model.task}, labels {trained.labels}",
        f"- Data: {title(recipe.data.name, recipe.data.files)}, validation split `{recipe.data.eval_split}`",
        f"- Run: `{trained.run_dir.name}`; validation {_scores(metrics['task_metrics'])}",
        "",
        "## How this export was made and checked",
        "",
        f"`{record['command']}` {loaded}, applied the adapter, merged it with peft's",
        "`merge_and_unload`, and saved plain transformers weights (no peft needed to load them).",
        f"On {v['compared_examples']} validation examples (the longest and others at random) the adapter model as",
        f"trained and this export differ by at most {v['max_abs_logit_diff']:.3g} in a logit; {agreement(v)}.",
        f"Export on the reported split: {_scores(record['export_metrics'])}.",
    ] + _made_with(record.get("environment"))
    if recipe.quant:
        other = next(b for b in BASES if b != base)
        lines += ["", "## Which base: original or de-quantized",
                  "", f"The adapter was trained on a {quant}. Merged into the original full-precision weights, the",
                  "export puts back the precision quantization removed, which the adapter never saw: not bit-identical",
                  "to the model as trained, and the difference is real and expected. Merged into the de-quantized",
                  "weights, it is the model as trained up to float rounding" + (
                      " (and LLM.int8's rounding of activations, which no float model reproduces)"
                      if recipe.quant.kind == "8bit" else "") + ". Both were built and measured:", "",
                  "| base | max abs logit difference to the model as trained | agreement | export on the reported split |",
                  "|---|---|---|---|"]
        lines += [f"| {b}{' (this folder)' if b == base else ''} | {m['verification']['max_abs_logit_diff']:.3g} | "
                  f"{agreement(m['verification'])} | {_scores(m['export_metrics'])} |" for b, m in record["bases"].items()]
        lines += ["", f"`python -m peftlab.merge {record['source_run']} --out DIR --base {other}` writes the other one."]
    auto = trained.task.MODEL_CLASS.__name__
    lines += ["", "```python", f"from transformers import {auto}, AutoTokenizer",
              f"model = {auto}.from_pretrained(\"<this folder>\")",
              "tokenizer = AutoTokenizer.from_pretrained(\"<this folder>\")", "```"]
    return "\n".join(lines) + "\n"


def _verified(run_dir: Path, folder: Path, dtype_name: str, base: str, reference, data_root, prepared,
              n_compare: int) -> dict:
    """Merge into `base`, save in `folder`, load it back as a user would, and measure it against the model as trained
    (`reference`) on the prepared reported split: its verification and its score."""
    trained, merged = merged_model(run_dir, DTYPES[dtype_name], base)
    leftover = peft_keys(merged.state_dict())
    check(not leftover, f"merge left peft modules behind ({leftover[:3]}); this method cannot be exported")
    merged.save_pretrained(folder)
    trained.tokenizer.save_pretrained(folder)
    plain = type(merged).from_pretrained(folder, dtype=DTYPES[dtype_name]).eval()
    verification = compare_logits(reference.model, plain, trained.tokenizer, trained.task,
                                  verification_examples(prepared[1], n_compare))
    # scored the same way a run is evaluated
    return {"verification": verification,
            "export_metrics": evaluate_split(replace(reference, model=plain), data_root, prepared)}


def export(run_dir: Path, out: Path, dtype_name: str, data_root, n_compare: int, command: str,
           base: str = "original") -> dict:
    run_dir = rundir.require_finished(run_dir)
    recipe = rundir.read_json(run_dir / "recipe.json")
    method = METHODS[recipe["method"]["kind"]]
    check(method.mergeable or method.kind == "full",
          f"{method.__name__} adapters cannot be merged into the base weights; use the run directory as it is "
          f"(python -m peftlab.predict {run_dir}, or PeftModel/peftlab loading of {run_dir}/adapter onto the base)")
    check(not recipe["model"].get("head"), "the run has an MLP head, which plain transformers cannot load (no head "
          f"class for it): an export would come back with a random linear head; use the run directory "
          f"(python -m peftlab.predict {run_dir})")
    check(base in BASES, f"--base {base}: use one of {', '.join(BASES)}")
    check(base == "original" or recipe.get("quant"), f"--base {base}: run {run_dir} trained on a full-precision "
                                                      "base, there is nothing to de-quantize; drop --base")
    check(not out.exists(), f"{out} already exists: remove it or choose another --out")
    check(out.parent.is_dir(), f"--out {out}: the folder {out.parent} does not exist; create it first or choose "
                               "another --out")

    reference = load_trained(run_dir)  # base (quantized if it was) + adapter: the model as trained
    prepared = eval_inputs(reference, data_root)  # read and tokenized once: logit checks and scoring
    env = rundir.read_json(run_dir / "environment.json")
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        measured = {}  # the base asked for, written; for a quantized run the other too, measured and removed
        for each in [base] + [b for b in BASES if b != base and reference.recipe.quant is not None]:
            folder = tmp if each == base else tmp / f".{each}"
            measured[each] = _verified(run_dir, folder, dtype_name, each, reference, data_root, prepared, n_compare)
            if folder != tmp:
                shutil.rmtree(folder)
        changed = data_stage.changed_files(reference.recipe.data, data_root, env["data"].get("files", {}),
                                           [reference.recipe.data.eval_split])
        record = {"source_run": str(run_dir), "dtype": dtype_name, "command": command, "base": base,
                  **measured[base], "bases": measured,
                  "run_metrics": rundir.read_json(run_dir / "metrics.json")["task_metrics"],
                  "data_matches_run": not changed, "data_files": env["data"].get("files", {}),
                  "trained_on_quantized_base": reference.recipe.quant is not None,
                  "base_fingerprint": env["model"]["fingerprint"], "environment": measure.environment()}
        rundir.write_json(tmp / EXPORT_RECORD, record | {"recipe": recipe, "labels": reference.labels})
        rundir.write_atomic(tmp / "README.md", model_card(reference, record))
        tmp.rename(out)  # only a complete, verified export ever carries the final name
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record

"""python -m peftlab.merge RUN_DIR --out DIR [--dtype float32|bfloat16|float16] — fold the adapter into the
base weights and export a model that plain transformers loads, verified against the adapter as trained.

The merge always goes into a fresh full-precision base, never into 4-bit/8-bit weights (peft #2321,
transformers #31293: rounding there destroys quality). Verification is part of the command: logits of
the adapter model as trained vs the export on validation examples (max |Δlogit|, label agreement), and
the export's own validation score."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from . import rundir
from .errors import check, cli_exit_code
from .measure import disk_bytes, human_bytes

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PEFT_KEY_MARKERS = ("lora_", "base_layer", "modules_to_save", "original_module", "ia3_", "magnitude")
EXPORT_RECORD = "peftlab_export.json"


def merged_model(run_dir: Path, dtype: torch.dtype):
    """Base in full precision + the run's weights, merged into plain transformers modules."""
    from .loading import load_trained

    trained = load_trained(run_dir, quantized=False)
    model = trained.model.merge_and_unload() if hasattr(trained.model, "merge_and_unload") else trained.model
    return trained, model.to(dtype)


@torch.no_grad()
def compare_logits(reference, export, tokenizer, task, examples) -> dict:
    """max |Δlogit| and predicted-label agreement between two models on the same batches (float32 maths)."""
    collate = task.collator(tokenizer)
    max_diff, agree, total = 0.0, 0, 0
    for start in range(0, len(examples), 32):
        batch = collate([{k: v for k, v in ex.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                         for ex in examples.select(range(start, min(start + 32, len(examples))))])
        a, b = _logits(reference(**batch)), _logits(export(**batch))
        max_diff = max(max_diff, (a - b).abs().max().item())
        agree += (a.argmax(-1) == b.argmax(-1)).sum().item()
        total += a.argmax(-1).numel()
    return {"max_abs_logit_diff": max_diff, "label_agreement": agree / total, "compared_examples": len(examples)}


def _logits(output) -> torch.Tensor:
    """Class logits; for extractive QA start and end logits as two rows per example (argmax: the positions)."""
    if getattr(output, "logits", None) is not None:
        return output.logits.float()
    return torch.stack([output.start_logits, output.end_logits], dim=1).float()


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
        f"- Data: {recipe.data.name}, validation split `{recipe.data.eval_split}`",
        f"- Run: `{trained.run_dir.name}`; validation {', '.join(f'{k} {v:.4f}' for k, v in metrics['task_metrics'].items())}",
        "",
        "## How this export was made and checked",
        "",
        f"`{record['command']}` loaded the base in full precision, applied the adapter, merged it with peft's",
        "`merge_and_unload`, and saved plain transformers weights (no peft needed to load them).",
        f"On {v['compared_examples']} validation examples the adapter model as trained and this export differ by at most",
        f"{v['max_abs_logit_diff']:.3g} in a logit and agree on {100 * v['label_agreement']:.2f} % of predicted labels.",
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
    from .loading import load_trained
    from .predict import eval_inputs, evaluate_split

    run_dir = rundir.require_finished(run_dir)
    recipe = rundir.read_json(run_dir / "recipe.json")
    from .methods import METHODS

    method = METHODS[recipe["method"]["kind"]]
    check(method.mergeable or method.kind == "full",
          f"{method.__name__} adapters cannot be merged into the base weights; use the run directory as it is "
          f"(python -m peftlab.predict {run_dir}, or PeftModel/peftlab loading of {run_dir}/adapter onto the base)")
    check(not recipe["model"].get("head"), "the run has an MLP head, which plain transformers cannot load (no head "
          f"class for it): an export would come back with a random linear head; use the run directory "
          f"(python -m peftlab.predict {run_dir})")
    check(not out.exists(), f"{out} already exists: remove it or choose another --out")

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
                                      examples.select(range(min(n_compare, len(examples)))))
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


def main(argv: list[str] | None = None) -> int:
    import shlex

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m peftlab.merge", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run directory")
    parser.add_argument("--out", type=Path, required=True, help="export folder to create")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--compare", type=int, default=256, help="validation examples for the logit check")
    parser.add_argument("--data-dir", default=None, help="local data folder (default: $PEFTLAB_DATA_DIR)")
    args = parser.parse_args(argv)
    from .run import quiet_libraries

    quiet_libraries()
    return cli_exit_code(lambda: _merge(args, shlex.join(["python", "-m", "peftlab.merge", *argv])))


def _merge(args, command: str) -> None:
    from . import data as data_stage

    record = export(args.run, args.out, args.dtype, data_stage.data_dir(args.data_dir), args.compare, command)
    v = record["verification"]
    print(f"exported {args.out} ({args.dtype}, {human_bytes(disk_bytes(args.out))})")
    print(f"max |Δlogit| vs the adapter model as trained: {v['max_abs_logit_diff']:.3g} on {v['compared_examples']} "
          f"examples; label agreement {100 * v['label_agreement']:.2f} %")
    print(f"validation: export {record['export_metrics']} | run {record['run_metrics']}")


if __name__ == "__main__":
    sys.exit(main())

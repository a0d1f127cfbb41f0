"""Bad input, case by case, through the command line as a user meets it.

Every case must end with exit code 2 and exactly one `error:` line that names the problem and the fix, and
leave nothing that looks complete: no finished run directory, no metrics.json or report.md, nothing in
reports/, and run directories it was pointed at keep their state. (tests/test_recipe.py checks more recipe
field variants at the API level; this table is the end-to-end list.)

| case | the error line contains (problem … fix) |
|---|---|
| recipe file missing | recipe file … not found: pass the path of a recipes/*.py file |
| recipe syntax error | r.py:1: syntax error in recipe |
| no `recipe` in the file | r.py: define a top-level `recipe = Recipe(...)` |
| unknown field | unknown field 'epoch' in Train (did you mean 'epochs'?) |
| misspelled part name | name 'LoRa' is not defined (did you mean 'LoRA'?) |
| wrong type | train.batch_size='32': expected int |
| out of range: learning rate | train.lr=2: the learning rate must be in (0, 1) |
| out of range: LoRA rank | method.r=0: the rank must be >= 1 |
| out of range: max_length | data.max_length=4: use a value in 8..8192 |
| out of range: keep_checkpoints | train.keep_checkpoints=0: must be >= 1 |
| out of range: trim_memory | train.trim_memory=0: use a number of steps >= 1, or false … |
| unknown task | model.task='translation': expected one of 'classification', … |
| unknown method | method: str is not a method; use one of FullFineTuning, LoRA, … |
| unknown quantization | recipe.quant: use None, Quant4bit(...) or Quant8bit(...) |
| bad quantization type | quant.type='int3': expected one of 'nf4', 'fp4' |
| prefix tuning on a 4-bit base | PrefixTuning does not run on a quantized base … set quant=None |
| full fine-tuning on an 8-bit base | FullFineTuning cannot run on a quantized base; set quant=None |
| regression with label names | a regression model has a single output … remove labels from the recipe |
| bad recipe name | recipe.name='my run/1': use letters, digits, '_', '-' or '.' |
| --set without '=' | --set 'train.epochs': use the form section.field=value |
| --set unknown field | Train has no field 'epoch' (did you mean 'epochs'?) |
| --set wrong type | --set method.r=big: expected int |
| unknown device | train.device='tpu': expected one of 'auto', 'cpu', 'cuda' |
| GPU asked for, none present | train.device='cuda' but torch … sees no CUDA GPU …; use --set train.device=auto |
| unknown tracker | train.report_to: unknown tracker 'tensorbord' (did you mean 'tensorboard'?); use 'auto', [] for none … |
| tracker not installed | train.report_to: clearml is not installed here (usable: …); pip install clearml, or leave it out … |
| model path missing | model folder … does not exist: fix the path in Model(name=...) |
| model folder is not a model | model folder … has no config.json: point Model(name=...) at a saved Hugging Face model |
| model folder without weights | … has a config.json but no weights …: point Model(name=...) at a complete saved model |
| unknown model, offline | the Hub is unreachable and no offline copy is known; pass a local model folder |
| data directory missing | data directory … does not exist: fix --data-dir |
| dataset folder missing | dataset glue/sst2: no folder …; put the files there or fix --data-dir |
| split missing | split 'validation' not found in … set data.train_split/data.eval_split |
| split empty | the split is empty (a header and no examples); supply a file with at least one example |
| text column missing | no column 'sentence' (columns: review, label); set data.text/data.label |
| label column missing | no column 'label' (columns: sentence, stars); set data.text/data.label |
| label id outside the label set | train split: label 2 outside 0..1; fix the data or model.labels |
| label name outside the label set | label 'neutral' is not in the label set …; fix the data or model.labels |
| regression target not a number | score='high' is not a number; fix that row or set data.label |
| empty text | empty text in column 'sentence'; remove or fill those rows |
| JSON lines file broken | train.jsonl:1: not a JSON object per line; fix the file |
| NaN/inf loss | training loss became inf at step N …: stopped before updating the weights; the last good checkpoint is kept: …; lower train.lr … |
| runs dir unwritable (a file) | --runs-dir …: … is a file, not a folder; pass a writable folder |
| reports dir unwritable (a file) | --reports-dir …: … is a file, not a folder; pass a writable folder |
| disk full writing results | cannot write …metrics.json: no space left on the device …; free some space … then resume the run |
| disk full writing a checkpoint | cannot write …: a write failed (disk full?) …; free some space … then resume the run |
| resume a finished run | run … already finished: nothing to resume; start a new run without --resume |
| resume with another recipe | the recipe differs from the run's (train.lr: 0.01 -> 0.02); resume with the recipe and --set options the run started with: … |
| resume with changed data | data file … changed since the run started; restore them or start a new run without --resume |
| resume a run still running | run … is still running (pid …): stop it first |
| resume, nothing to resume | --resume: no interrupted or failed run of tiny in …; start a new run without --resume |
| resume a folder that is no run | --resume …: not a run directory (no status.json); pass a … folder |
| report of an unfinished run | run … is 'interrupted', not finished: rerun it (or resume it) first |
| predict from an unfinished run | run … is 'interrupted', not finished: rerun it (or resume it) first |
| adapter onto the wrong base | run … was trained on base weights sha256 …: load the run with the base model it was trained on |
| merge of an unfinished run | run … is 'interrupted', not finished: rerun it (or resume it) first |
| data file not UTF-8 | train.tsv:3: not UTF-8 text (byte 0xe8); save the file as UTF-8 … |
| adapter weights truncated | …/adapter: a saved file is truncated or garbled (SafetensorError …); restore the folder … |
| pickle adapter in place of safetensors | …/adapter: holds a pickle weights file, refused unread …; restore the folder … |
| run record truncated | …/recipe.json: not readable JSON (…); restore the file from a copy or rerun what wrote it |
| run record missing | …/metrics.json is missing: the folder is incomplete; restore the file … |
| saved tokenizer garbled | tokenizer in …/tokenizer: cannot load it (…); restore its files … |
| model config.json garbled | model folder …: config.json is not valid JSON (…); restore it … |
| comparison record garbled | …/comparison.json: not readable JSON (…); restore the file … |
| JSON data file broken | train.json: not readable as JSON or JSON lines (…); fix the file |
| merge --out under a missing folder | --out …: the folder … does not exist; create it first or choose another --out |
| merge --base dequantized, full-precision run | --base dequantized: run … trained on a full-precision base, there is nothing to de-quantize; drop --base |
| predict --input of an unknown type | --input reviews.xlsx: unknown file type '.xlsx'; give a .jsonl, .csv, .tsv file |
| predict --input without the text column | --input …: no column 'sentence' (columns: review); this run reads 'sentence' (data.text): rename the columns |
| predict --input empty | --input …: no rows to predict (an empty file or a header only); give a file with at least one row |
| predict --input with an empty text | --input …, row 2: empty 'sentence' (1 such rows); fill or remove them |
| predict --output unwritable | --output …: cannot write in … (missing or read-only); create it or choose another --output |
| predict --eval on other data | --eval: …validation.tsv (md5 …): not the data the run was evaluated on; pass --data-dir with the run's data, or --allow-other-data … |
| data file missing | data.files['train']: no file …; fix the path (relative paths are read from the data directory …) |
| data file of unknown type | data.files['train']='mine/train.xlsx': unknown file type; use one of .csv, .tsv, … |
| split not in data.files | data.files has no split 'validation' (files: train); add its file to data.files or set … |
| column missing in a Parquet file | train.parquet: no column 'sentence' (columns: review, label); set data.text/data.label … |
| CSV data file broken | train.csv: not readable as CSV (…EOF inside string…); fix the file |
"""

from __future__ import annotations

import errno
import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from peftlab import compare, merge, predict, report, rundir
from peftlab import run as run_cli

from conftest import make_bert, run_recipe, sentiment_rows, write_recipe, write_tsv

MAINS = {"run": run_cli.main, "predict": predict.main, "report": report.main, "merge": merge.main,
         "compare": compare.main}
REGRESSION = [('task="classification", labels=["negative", "positive"]', 'task="regression"'),
              ('label="label"', 'label="score"')]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_bert, data_dir) -> Path:
    tmp = tmp_path_factory.mktemp("finished")
    recipe = write_recipe(tmp / "r.py", tiny_bert, train="epochs=1, lr=1e-2, batch_size=32")
    return run_recipe(tmp, recipe, data_dir, "--reports-dir", "")


class Bad:
    """Builds one case's inputs in its own folder and returns the command that should fail."""

    def __init__(self, tmp: Path, bert: Path, data_dir: Path, finished: Path, monkeypatch):
        self.tmp, self.bert, self.good_data, self.finished, self.monkeypatch = tmp, bert, data_dir, finished, monkeypatch
        self.runs, self.reports, self.watched = tmp / "runs", tmp / "reports", []

    def recipe(self, replace=(), **kwargs) -> Path:
        path = write_recipe(self.tmp / "r.py", self.bert, **kwargs)
        text = path.read_text()
        for old, new in replace:
            assert old in text, old
            text = text.replace(old, new)
        path.write_text(text)
        return path

    def text(self, source: str) -> Path:
        (self.tmp / "r.py").write_text(source)
        return self.tmp / "r.py"

    def data(self, train=None, validation=None, header=("sentence", "label"), files=None) -> Path:
        root = self.tmp / "data"
        write_tsv(root / "sst2" / "train.tsv", train if train is not None else sentiment_rows(32, seed=1), header)
        write_tsv(root / "sst2" / "validation.tsv", validation if validation is not None else sentiment_rows(8, 2),
                  header)
        for name, content in (files or {}).items():
            path = root / "sst2" / name
            path.unlink() if content is None else path.write_text(content)
        return root

    def run(self, recipe: Path | None = None, *extra: str, data: Path | None = None) -> tuple[str, list[str]]:
        recipe = recipe or self.recipe()
        return "run", [str(recipe), "--data-dir", str(data or self.good_data), "--runs-dir", str(self.runs),
                       "--reports-dir", str(self.reports), *extra]

    def run_copy(self, state: str = "interrupted", **status) -> Path:
        """A copy of a finished tiny run, set back to `state` (a run killed before it finished)."""
        copy = self.tmp / "copy" / self.finished.name
        shutil.copytree(self.finished, copy)
        if state != "finished":
            for name in ("metrics.json", "report.md"):
                (copy / name).unlink()
        if state == "interrupted":  # as a SIGKILL leaves it: "running", under a process that is gone
            gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True)
            rundir.set_status(copy, "running")
            record = json.loads((copy / "status.json").read_text())
            rundir.write_json(copy / "status.json", record | {"pid": int(gone.stdout)} | status)
        else:
            rundir.set_status(copy, state)
        self.watched.append(copy)
        return copy

    def finished_run(self) -> Path:
        self.watched.append(self.finished)
        return self.finished

    def resume(self, run_dir: Path | None, *extra: str, data: Path | None = None) -> tuple[str, list[str]]:
        """--resume with the recipe the finished tiny run was trained with (its recipe.py is the source)."""
        name, argv = self.run(self.finished / "recipe.py", *extra, data=data)
        return name, argv + (["--resume", str(run_dir)] if run_dir else ["--resume"])


def _no_space(path):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def disk_full_at_metrics(b: Bad):
    write_json = rundir.write_json
    b.monkeypatch.setattr(rundir, "write_json",
                          lambda path, data: _no_space(path) if path.name == "metrics.json" else write_json(path, data))
    return b.run(b.recipe(train="epochs=1, batch_size=64"))


def disk_full_at_checkpoint(b: Bad):
    def failing_save(*args, **kwargs):  # torch.save's own words when the disk fills up
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: file write failed")

    b.monkeypatch.setattr(torch, "save", failing_save)
    return b.run(b.recipe(train="epochs=1, batch_size=32, checkpoint_steps=2"))


def nan_loss(b: Bad):
    rows = [(text, float(label)) for text, label in sentiment_rows(64, seed=1)]
    rows[40] = ("a film", 1e30)  # a finite target whose squared error overflows float32: the loss is inf
    data = b.data(train=rows, validation=[(t, float(v)) for t, v in sentiment_rows(8, 2)], header=("sentence", "score"))
    return b.run(b.recipe(REGRESSION, train="epochs=1, lr=1e-3, batch_size=4, checkpoint_steps=1, keep_checkpoints=1"),
                 data=data)


def nothing_created(b: Bad) -> None:
    assert not b.runs.exists()  # refused before the run directory (and its folder) is created


def nan_loss_keeps_last_good_checkpoint(b: Bad, message: str) -> None:
    step = int(message.split(" at step ")[1].split()[0])
    kept = Path(message.split("the last good checkpoint is kept: ")[1].split(";")[0])
    assert step > 1 and kept.name == f"checkpoint-{step - 1}"  # one per step here: the one just before
    from safetensors.torch import load_file

    weights = load_file(kept / "adapter_model.safetensors")
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
    assert (kept / "optimizer.pt").is_file() and (kept / "trainer_state.json").is_file()


def wrong_base(b: Bad):
    copy = b.run_copy(state="finished")
    other = make_bert(b.tmp / "other-bert", seed=7)
    recipe = json.loads((copy / "recipe.json").read_text())
    recipe["model"]["name"] = str(other)
    (copy / "recipe.json").write_text(json.dumps(recipe))
    return "predict", [str(copy), "a good film"]


def changed_data(b: Bad):
    rows = sentiment_rows(256, seed=1)
    rows[0] = ("an edited sentence", rows[0][1])
    return b.resume(b.run_copy(), data=b.data(train=rows, validation=sentiment_rows(64, seed=2)))


def still_running(b: Bad):
    copy = b.run_copy(state="running")  # status written by this (live) process
    return b.resume(copy)


def latin1_data(b: Bad):
    root = b.data()
    rows = (root / "sst2" / "train.tsv").read_bytes().split(b"\n")
    rows[2] = "un film tr\u00e8s r\u00e9ussi\t1".encode("latin-1")
    (root / "sst2" / "train.tsv").write_bytes(b"\n".join(rows))
    return b.run(data=root)


def truncated_adapter(b: Bad):
    copy = b.run_copy(state="finished")
    weights = copy / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    return "predict", [str(copy), "a good film"]


def pickled_adapter(b: Bad):
    copy = b.run_copy(state="finished")
    (copy / "adapter" / "adapter_model.safetensors").unlink()
    # a pickle that holds more than tensors: torch.load(weights_only=True) refuses it without running anything
    torch.save({"base_model.model.classifier.weight": torch.zeros(2, 32), "made_in": Path("elsewhere")},
               copy / "adapter" / "adapter_model.bin")
    return "predict", [str(copy), "a good film"]


def damaged_run(b: Bad, name: str, command: str = "predict"):
    """A copy of the finished run with one of its files cut short (a copy interrupted, a disk that filled up)."""
    copy = b.run_copy(state="finished")
    (copy / name).write_text((copy / name).read_text()[:20])
    return command, [str(copy)] + (["a good film"] if command == "predict" else [])


def run_without(b: Bad, name: str):
    copy = b.run_copy(state="finished")
    (copy / name).unlink()
    return "report", [str(copy)]


def garbled_model_config(b: Bad):
    model = b.tmp / "bert"
    shutil.copytree(b.bert, model)
    (model / "config.json").write_text('{"model_type": "bert", "hidden')
    return b.run(b.recipe([(repr(str(b.bert)), repr(str(model)))]))


def garbled_comparison(b: Bad):
    folder = b.tmp / "comparison"
    folder.mkdir()
    (folder / "comparison.json").write_text('{"name": "c", "runs": [')
    return "compare", [str(folder), "--report-only", "--reports-dir", str(b.reports)]


def predict_file(b: Bad, name: str, content: str, output: Path | None = None) -> tuple[str, list[str]]:
    """predict --input of a file written here; the output must not appear (nothing half-written)."""
    source = b.tmp / name
    source.write_text(content)
    b.output = output or b.tmp / "predictions.jsonl"
    return "predict", [str(b.finished_run()), "--input", str(source), "--output", str(b.output)]


def no_output(b: Bad, message: str) -> None:
    assert not b.output.exists() and not list(b.output.parent.glob(f".{b.output.name}.*"))


def other_eval_data(b: Bad):
    rows = sentiment_rows(64, seed=2)
    rows[3] = ("an edited sentence", rows[3][1])
    return "predict", [str(b.finished_run()), "--eval", "--data-dir", str(b.data(validation=rows))]


@dataclass
class Case:
    name: str
    setup: Callable[[Bad], tuple[str, list[str]]]
    problem: str
    fix: str
    after: Callable[[Bad, str], None] | None = None


CASES = [
    Case("recipe file missing", lambda b: b.run(b.tmp / "missing.py"), "missing.py not found",
         "pass the path of a recipes/*.py file"),
    Case("recipe syntax error", lambda b: b.run(b.text("recipe = Recipe(\n")), "syntax error in recipe", "r.py:1"),
    Case("no `recipe` in the file", lambda b: b.run(b.text("x = 1\n")), "r.py", "define a top-level `recipe = Recipe"),
    Case("unknown field", lambda b: b.run(b.recipe(train="epoch=3")), "unknown field 'epoch' in Train",
         "did you mean 'epochs'?"),
    Case("misspelled part name", lambda b: b.run(b.recipe(method="LoRa(r=4)")), "name 'LoRa' is not defined",
         "did you mean 'LoRA'?"),
    Case("wrong type", lambda b: b.run(b.recipe(train="batch_size='32'")), "train.batch_size='32'", "expected int"),
    Case("out of range: learning rate", lambda b: b.run(b.recipe(train="lr=2")), "train.lr=2",
         "the learning rate must be in (0, 1)"),
    Case("out of range: LoRA rank", lambda b: b.run(b.recipe(method="LoRA(r=0)")), "method.r=0",
         "the rank must be >= 1"),
    Case("out of range: max_length", lambda b: b.run(b.recipe([("max_length=32", "max_length=4")])),
         "data.max_length=4", "use a value in 8..8192"),
    Case("out of range: keep_checkpoints", lambda b: b.run(b.recipe(train="keep_checkpoints=0")),
         "train.keep_checkpoints=0", "must be >= 1"),
    Case("out of range: trim_memory", lambda b: b.run(b.recipe(train="trim_memory=0")),
         "train.trim_memory=0", "use a number of steps >= 1, or false for between phases only"),
    Case("unknown task", lambda b: b.run(b.recipe([('"classification"', '"translation"')])),
         "model.task='translation'", "expected one of 'classification'"),
    Case("unknown method", lambda b: b.run(b.recipe(method="'lora'")), "method: str is not a method",
         "use one of FullFineTuning, LoRA"),
    Case("unknown quantization", lambda b: b.run(b.recipe(extra="quant='nf4',")), "recipe.quant",
         "use None, Quant4bit(...) or Quant8bit(...)"),
    Case("bad quantization type", lambda b: b.run(b.recipe(extra="quant=Quant4bit(type='int3'),")),
         "quant.type='int3'", "expected one of 'nf4', 'fp4'"),
    Case("prefix tuning on a 4-bit base", lambda b: b.run(b.recipe(method="PrefixTuning()", extra="quant=Quant4bit(),")),
         "PrefixTuning does not run on a quantized base", "set quant=None"),
    Case("full fine-tuning on an 8-bit base",
         lambda b: b.run(b.recipe(method="FullFineTuning()", extra="quant=Quant8bit(),")),
         "FullFineTuning cannot run on a quantized base", "set quant=None"),
    Case("regression with label names", lambda b: b.run(
        b.recipe([('task="classification"', 'task="regression"'), ('label="label"', 'label="score"')]),
        data=b.data(train=[("a good film", 0.9)] * 4, validation=[("a bad film", 0.1)], header=("sentence", "score"))),
        "a regression model has a single output and no label names", "remove labels from the recipe"),
    Case("bad recipe name", lambda b: b.run(b.recipe(name="my run/1")), "recipe.name='my run/1'",
         "use letters, digits"),
    Case("--set without '='", lambda b: b.run(None, "--set", "train.epochs"), "--set 'train.epochs'",
         "use the form section.field=value"),
    Case("--set unknown field", lambda b: b.run(None, "--set", "train.epoch=2"), "Train has no field 'epoch'",
         "did you mean 'epochs'?"),
    Case("--set wrong type", lambda b: b.run(None, "--set", "method.r=big"), "--set method.r=big", "expected int"),
    Case("unknown device", lambda b: b.run(b.recipe(train="device='tpu'")), "train.device='tpu'",
         "expected one of 'auto', 'cpu', 'cuda'"),
    pytest.param(Case("GPU asked for, none present", lambda b: b.run(None, "--set", "train.device=cuda"),
                      "train.device='cuda' but torch", "use --set train.device=auto"),
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
    Case("unknown tracker", lambda b: b.run(b.recipe(train="report_to=['tensorbord']")),
         "unknown tracker 'tensorbord' (did you mean 'tensorboard'?)", "use 'auto', [] for none"),
    pytest.param(Case("tracker not installed", lambda b: b.run(None, "--set", "train.report_to=clearml"),
                      "train.report_to: clearml is not installed here", "pip install clearml, or leave it out",
                      after=lambda b, message: nothing_created(b)),
                 marks=pytest.mark.skipif(importlib.util.find_spec("clearml") is not None,
                                          reason="clearml is installed")),
    Case("model path missing", lambda b: b.run(b.recipe([(str(b.bert), str(b.tmp / "no-such-model"))])),
         "no-such-model does not exist", "fix the path in Model(name=...)"),
    Case("model folder is not a model", lambda b: b.run(b.recipe([(str(b.bert), str(b.good_data))])),
         "has no config.json", "point Model(name=...) at a saved Hugging Face model"),
    Case("model folder without weights", lambda b: b.run(b.recipe([(str(b.bert), str(
        shutil.copytree(b.bert, b.tmp / "no-weights", ignore=shutil.ignore_patterns("*.safetensors"))))])),
         "has a config.json but no weights", "point Model(name=...) at a complete saved model"),
    Case("unknown model, offline", lambda b: b.run(b.recipe([(str(b.bert), "someone/no-such-model")])),
         "the Hub is unreachable and no offline copy is known", "pass a local model folder"),
    Case("data directory missing", lambda b: b.run(data=b.tmp / "nowhere"), "data directory", "fix --data-dir"),
    Case("dataset folder missing", lambda b: b.run(data=b.tmp), "dataset glue/sst2: no folder",
         "put the files there or fix --data-dir"),
    Case("split missing", lambda b: b.run(data=b.data(files={"validation.tsv": None})),
         "split 'validation' not found", "set data.train_split/data.eval_split"),
    Case("split empty", lambda b: b.run(data=b.data(train=[])), "the split is empty",
         "supply a file with at least one example"),
    Case("text column missing", lambda b: b.run(data=b.data(header=("review", "label"))), "no column 'sentence'",
         "set data.text/data.label"),
    Case("label column missing", lambda b: b.run(data=b.data(header=("sentence", "stars"))), "no column 'label'",
         "set data.text/data.label"),
    Case("label id outside the label set", lambda b: b.run(data=b.data(train=[("a good film", 1), ("a bad film", 2)])),
         "label 2 outside 0..1", "fix the data or model.labels"),
    Case("label name outside the label set", lambda b: b.run(b.recipe(), data=b.data(
        train=[("a good film", "positive"), ("a dull film", "neutral")], validation=[("a good film", "positive")])),
         "label 'neutral' is not in the label set", "fix the data or model.labels"),
    Case("regression target not a number", lambda b: b.run(b.recipe(REGRESSION), data=b.data(
        train=[("a good film", 0.9), ("a bad film", "high")], validation=[("a film", 0.5)], header=("sentence", "score"))),
         "score='high' is not a number", "fix that row or set data.label"),
    Case("empty text", lambda b: b.run(data=b.data(train=[("a good film", 1), ("", 0)])),
         "empty text in column 'sentence'", "remove or fill those rows"),
    Case("JSON lines file broken", lambda b: b.run(b.recipe([('"glue/sst2"', '"reviews"')]), data=_jsonl_data(b)),
         "train.jsonl:1: not a JSON object per line", "fix the file"),
    Case("NaN/inf loss", nan_loss, "training loss became inf", "lower train.lr", nan_loss_keeps_last_good_checkpoint),
    Case("runs dir unwritable (a file)", lambda b: b.run(None, "--runs-dir", str(_a_file(b) / "runs")),
         "is a file, not a folder", "pass a writable folder"),
    Case("reports dir unwritable (a file)", lambda b: b.run(None, "--reports-dir", str(_a_file(b) / "reports")),
         "is a file, not a folder", "pass a writable folder"),
    Case("disk full writing results", disk_full_at_metrics, "metrics.json: no space left on the device",
         "free some space"),
    Case("disk full writing a checkpoint", disk_full_at_checkpoint, "a write failed (disk full?)",
         "then resume the run"),
    Case("resume a finished run", lambda b: b.resume(b.finished_run()), "already finished",
         "start a new run without --resume"),
    Case("resume with another recipe", lambda b: b.resume(b.run_copy(), "--set", "train.lr=0.02"),
         "the recipe differs from the run's (train.lr: 0.01 -> 0.02)",
         "resume with the recipe and --set options the run started with"),
    Case("resume with changed data", changed_data, "changed since the run started",
         "restore them or start a new run without --resume"),
    Case("resume a run still running", still_running, "is still running", "stop it first"),
    Case("resume, nothing to resume", lambda b: b.resume(None), "no interrupted or failed run of tiny",
         "start a new run without --resume"),
    Case("resume a folder that is no run", lambda b: b.resume(b.tmp), "not a run directory (no status.json)",
         "pass a"),
    Case("report of an unfinished run", lambda b: ("report", [str(b.run_copy())]), "is 'interrupted', not finished",
         "rerun it (or resume it) first"),
    Case("predict from an unfinished run", lambda b: ("predict", [str(b.run_copy()), "a good film"]),
         "is 'interrupted', not finished", "rerun it (or resume it) first"),
    Case("adapter onto the wrong base", wrong_base, "was trained on base weights sha256",
         "load the run with the base model it was trained on"),
    Case("merge of an unfinished run", lambda b: ("merge", [str(b.run_copy()), "--out", str(b.tmp / "export")]),
         "is 'interrupted', not finished", "rerun it (or resume it) first"),
    Case("data file not UTF-8", latin1_data, "train.tsv:3: not UTF-8 text (byte 0xe8)", "save the file as UTF-8"),
    Case("adapter weights truncated", truncated_adapter, "a saved file is truncated or garbled (SafetensorError",
         "restore the folder"),
    Case("pickle adapter in place of safetensors", pickled_adapter, "holds a pickle weights file, refused unread",
         "restore the folder"),
    Case("run record truncated", lambda b: damaged_run(b, "recipe.json"), "recipe.json: not readable JSON",
         "restore the file from a copy or rerun what wrote it"),
    Case("run record missing", lambda b: run_without(b, "metrics.json"), "metrics.json is missing",
         "restore the file from a copy"),
    Case("saved tokenizer garbled", lambda b: damaged_run(b, "tokenizer/tokenizer.json"), "tokenizer in",
         "restore its files"),
    Case("model config.json garbled", garbled_model_config, "config.json is not valid JSON", "restore it"),
    Case("comparison record garbled", garbled_comparison, "comparison.json: not readable JSON", "restore the file"),
    Case("JSON data file broken", lambda b: b.run(b.recipe([('"glue/sst2"', '"reviews"')]), data=_json_data(b)),
         "train.json: not readable as JSON or JSON lines (", "fix the file"),
    Case("merge --out under a missing folder", lambda b: ("merge", [str(b.finished_run()), "--out",
                                                                     str(b.tmp / "no" / "such" / "export")]),
         "does not exist", "create it first or choose another --out"),
    Case("merge --base dequantized, full-precision run", lambda b: ("merge", [str(b.finished_run()), "--out",
                                                                               str(b.tmp / "x"), "--base", "dequantized"]),
         "trained on a full-precision base, there is nothing to de-quantize", "drop --base"),
    Case("predict --input of an unknown type", lambda b: predict_file(b, "reviews.xlsx", "sentence\na good film\n"),
         "unknown file type '.xlsx'", "give a .jsonl, .csv, .tsv file", no_output),
    Case("predict --input without the text column", lambda b: predict_file(b, "in.csv", "review\na good film\n"),
         "no column 'sentence' (columns: review)", "this run reads 'sentence' (data.text): rename the columns", no_output),
    Case("predict --input empty", lambda b: predict_file(b, "in.jsonl", "\n"), "no rows to predict",
         "give a file with at least one row", no_output),
    Case("predict --input with an empty text",
         lambda b: predict_file(b, "in.jsonl", '{"sentence": "a good film"}\n{"sentence": " "}\n'),
         "row 2: empty 'sentence'", "fill or remove them", no_output),
    Case("predict --output unwritable", lambda b: predict_file(b, "in.csv", "sentence\na good film\n",
                                                               output=b.tmp / "no" / "such" / "out.jsonl"),
         "cannot write in", "create it or choose another --output", no_output),
    Case("predict --eval on other data", other_eval_data, "validation.tsv (md5",
         "not the data the run was evaluated on; pass --data-dir with the run's data, or --allow-other-data"),
    Case("data file missing", lambda b: b.run(b.recipe([FILES]), data=b.tmp), "data.files['train']: no file",
         "fix the path (relative paths are read from the data directory"),
    Case("data file of unknown type", lambda b: b.run(b.recipe([(FILES[0], FILES[1].replace("train.csv", "train.xlsx"))])),
         "data.files['train']='mine/train.xlsx': unknown file type", "use one of .csv, .tsv"),
    Case("split not in data.files", lambda b: b.run(b.recipe([(FILES[0], 'files={"train": "mine/train.csv"}')])),
         "data.files has no split 'validation' (files: train)", "add its file to data.files"),
    Case("column missing in a Parquet file", lambda b: b.run(b.recipe([(FILES[0], FILES[1].replace(".csv", ".parquet"))]),
                                                              data=_own_files(b, ".parquet", ("review", "label"))),
         "train.parquet: no column 'sentence' (columns: review, label)", "set data.text/data.label"),
    Case("CSV data file broken", lambda b: b.run(b.recipe([FILES]), data=_own_files(
        b, ".csv", train='sentence,label\n"a good film,1\n')), "train.csv: not readable as CSV (", "fix the file"),
]
FILES = ('"glue/sst2"', 'files={"train": "mine/train.csv", "validation": "mine/validation.csv"}')


def _own_files(b: Bad, suffix: str, header=("sentence", "label"), train: str | None = None) -> Path:
    """The data directory of a recipe with files={"train": "mine/train<suffix>", ...}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = b.tmp / "own" / "mine"
    folder.mkdir(parents=True)
    for split, rows in (("train", sentiment_rows(16, seed=1)), ("validation", sentiment_rows(4, seed=2))):
        if suffix == ".parquet":
            pq.write_table(pa.Table.from_pylist([dict(zip(header, row)) for row in rows]), folder / f"{split}.parquet")
        else:
            (folder / f"{split}.csv").write_text(",".join(header) + "\n" + "".join(f"{t},{y}\n" for t, y in rows))
    if train is not None:
        (folder / f"train{suffix}").write_text(train)
    return folder.parent


def _a_file(b: Bad) -> Path:
    path = b.tmp / "a-file"
    path.write_text("")
    return path


def _jsonl_data(b: Bad) -> Path:
    folder = b.tmp / "jsonl" / "reviews"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("not json\n")
    (folder / "validation.jsonl").write_text('{"sentence": "a film", "label": 1}\n')
    return folder.parent


def _json_data(b: Bad) -> Path:
    folder = b.tmp / "json" / "reviews"
    folder.mkdir(parents=True)
    (folder / "train.json").write_text('[{"sentence": "a good film", "label": 1}, {"sentence": "a')  # cut short
    (folder / "validation.json").write_text('[{"sentence": "a film", "label": 1}]')
    return folder.parent


def _case_id(case) -> str:
    return (case.values[0] if hasattr(case, "values") else case).name


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_input(case, tmp_path, tiny_bert, data_dir, finished_run, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bad = Bad(tmp_path, tiny_bert, data_dir, finished_run, monkeypatch)
    command, argv = case.setup(bad)
    states = {path: rundir.status(path) for path in bad.watched}
    capsys.readouterr()
    assert MAINS[command](argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err[-3000:]
    message = errors[0]
    assert case.problem in message and case.fix in message, message
    # nothing left that looks complete
    for run_dir in (bad.runs.iterdir() if bad.runs.is_dir() else []):
        assert rundir.status(run_dir) != "finished"
        assert not (run_dir / "metrics.json").exists() and not (run_dir / "report.md").exists()
    assert not bad.reports.exists() or not any(bad.reports.iterdir())
    assert {path: rundir.status(path) for path in bad.watched} == states  # refused runs are left as they were
    if case.after:
        case.after(bad, message)


def test_the_table_has_every_case():
    documented = [line.split(" | ")[0].strip("| ") for line in __doc__.splitlines() if line.startswith("| ")][1:]
    assert documented == [_case_id(c) for c in CASES] and len(CASES) >= 30

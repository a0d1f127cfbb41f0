"""Bottleneck adapters, implemented natively (peft has none): Houlsby et al. 2019 (after the attention and the
feed-forward output projections of every layer) and Pfeiffer et al. 2021 (after the feed-forward one only).

Each adapter is h -> h + up(act(down(h))) applied to a projection's output, before the model's own residual
add and LayerNorm. It is attached as a child `adapter` of the projection and applied by a forward hook rather
than by replacing the projection: the base's own state_dict names stay unchanged (Trainer checkpoints, quantized
loading) and the projection may be an nn.Linear or a bitsandbytes Linear4bit/Linear8bitLt alike, untouched.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..errors import PeftlabError, check
from .base import Context, Method, readable_weights

WEIGHTS, CONFIG = "bottleneck_model.safetensors", "bottleneck_config.json"
# Output projections by model family, matched at the end of module names. BERT/RoBERTa name both "...dense",
# so the FFN pattern needs the "layer.N." prefix; anchoring on "." keeps heads such as classifier.dense out.
ATTENTION = re.compile(r"(^|\.)(attention\.output\.dense|attention\.out_lin|self_attn\.o_proj)$")
FFN = re.compile(r"(^|\.)(layer\.\d+\.output\.dense|ffn\.lin2|mlp\.down_proj)$")
FAMILIES = "BERT/RoBERTa-style encoders, DistilBERT and Llama-style decoders"
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "tanh": nn.Tanh}


class Adapter(nn.Module):
    def __init__(self, d: int, m: int, non_linearity: str, residual: bool, dropout: float, device=None):
        super().__init__()
        self.down = nn.Linear(d, m, device=device)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(m, d, device=device)
        self.dropout = nn.Dropout(dropout)
        self.residual = residual
        # near-identity start (Houlsby et al. 2019): with up = 0 the wrapped model equals the base exactly
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = h.float()  # float32 adapter on a bf16/fp16 (or 4-bit-computed) base: small updates don't round away
        out = self.dropout(self.up(self.act(self.down(x))))
        return (x + out if self.residual else out).to(h.dtype)


def _apply_adapter(module: nn.Module, args, output):
    """Forward hook on the projection: looked up at call time, so reloading weights needs no re-hooking."""
    return module.adapter(output)


@dataclass(frozen=True)
class Bottleneck(Method):
    reduction_factor: int = 16  # bottleneck size m = hidden // reduction_factor
    non_linearity: Literal["relu", "gelu", "swish", "tanh"] = "relu"
    residual: bool = True  # add the adapter output to its input (False: replace it; no identity start)
    dropout: float = 0.0
    mergeable = False  # the non-linearity cannot be folded into the base weights
    quantizable = True
    saves = "adapter"
    patterns = (ATTENTION, FFN)

    def check(self, where: str) -> None:
        check(self.reduction_factor >= 1,
              f"{where}.reduction_factor={self.reduction_factor}: must be >= 1, e.g. 16 (bottleneck = hidden // it)")
        check(0 <= self.dropout < 1, f"{where}.dropout={self.dropout}: use a value in [0, 1)")

    def placements(self, model, heads) -> list[str]:
        names = [n for n, _ in model.named_modules()
                 if any(p.search(n) for p in self.patterns) and n.split(".")[0] not in heads]
        check(bool(names), f"method: {type(self).__name__} found no place for adapters in "
                           f"{type(model).__name__}; supported: {FAMILIES}")
        return names

    def wrap(self, model, ctx: Context):
        self.check("method")
        check(not hasattr(model, "peftlab_bottleneck"), "method: the model already has bottleneck adapters; "
                                                        "wrap a freshly loaded base")
        names = self.placements(model, ctx.heads)
        projections = [model.get_submodule(n) for n in names]
        d = min(p.out_features for p in projections)
        check(d // self.reduction_factor >= 1, f"method.reduction_factor={self.reduction_factor}: bottleneck "
                                               f"{d} // {self.reduction_factor} = 0 for hidden size {d}; "
                                               f"use a reduction_factor <= {d}")
        for param in model.parameters():
            param.requires_grad_(False)
        for proj in projections:  # nn.Linear or bnb Linear4bit/Linear8bitLt: both have out_features and weight
            proj.adapter = Adapter(proj.out_features, proj.out_features // self.reduction_factor,
                                   self.non_linearity, self.residual, self.dropout, proj.weight.device)
            proj.register_forward_hook(_apply_adapter)
        for head in ctx.heads:
            getattr(model, head).requires_grad_(True)
        # what save() needs to know; a plain attribute, so not part of the state_dict
        model.peftlab_bottleneck = {"kind": self.kind, **asdict(self), "hidden_size": d, "heads": list(ctx.heads),
                                    "placements": names}
        return model

    def trained_weights(self, model) -> dict[str, torch.Tensor]:
        """The trained weights only: every adapter and the task heads."""
        info = model.peftlab_bottleneck
        prefixes = tuple(f"{n}.adapter." for n in info["placements"]) + tuple(f"{h}." for h in info["heads"])
        return {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}

    def save(self, model, run_dir: Path) -> None:
        from safetensors.torch import save_file

        out = run_dir / self.saves
        out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.trained_weights(model).items()}
        save_file(weights, str(out / WEIGHTS), metadata={"format": "pt"})
        (out / CONFIG).write_text(json.dumps(model.peftlab_bottleneck, indent=2) + "\n")

    def load(self, base_model, run_dir: Path):
        from safetensors.torch import load_file

        folder = run_dir / self.saves
        with readable_weights(folder):
            saved = json.loads((folder / CONFIG).read_text())
        check(saved["kind"] == self.kind, f"{folder}: holds a {saved['kind']!r} adapter, not {self.kind!r}")
        model = self.wrap(base_model, Context(tuple(saved["heads"]), "", False))
        differ = sorted(k for k in saved.keys() | model.peftlab_bottleneck.keys()
                        if saved.get(k) != model.peftlab_bottleneck.get(k))
        check(not differ, f"{folder / CONFIG}: {', '.join(differ)} differ from this method and base; load the "
                          "adapter with the recipe and base model it was trained with")
        with readable_weights(folder):
            weights = load_file(str(folder / WEIGHTS))
        expected = set(self.trained_weights(model))
        if set(weights) != expected:
            raise PeftlabError(f"{folder / WEIGHTS}: missing {sorted(expected - set(weights))[:3]}, unexpected "
                               f"{sorted(set(weights) - expected)[:3]}; the file does not match this adapter")
        model.load_state_dict(weights, strict=False)  # strict on our keys (checked above); the base stays as loaded
        return model


@dataclass(frozen=True)
class Houlsby(Bottleneck):
    """Adapters after the attention and the feed-forward output projections (Houlsby et al. 2019)."""

    kind = "houlsby"


@dataclass(frozen=True)
class Pfeiffer(Bottleneck):
    """One adapter per layer, after the feed-forward output projection (Pfeiffer et al. 2021)."""

    kind = "pfeiffer"
    patterns = (FFN,)

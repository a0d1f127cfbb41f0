"""LoRA (Hu et al. 2021) through peft, with rsLoRA scaling, LoRA+ learning rates and peft's initialisations;
DoRA is the same with `use_dora`."""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch

from ..errors import check
from .base import Context, PeftMethod, check_target_and_dropout, peft_targets

# init -> peft's init_lora_weights. "default": peft's True (Kaiming-uniform A, zero B); "gaussian": A ~ N(0, 1/r).
# pissa/olora/corda start from the base's own principal directions and take them out of the base weights; eva and
# corda are fitted to a few training batches; loftq (on a 4-bit base) makes 4-bit base + B A close to the original
# full-precision weights, read from the model folder's safetensors.
PEFT_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora", "eva": "eva",
             "corda": "corda", "loftq": True}
FROM_DATA = ("eva", "corda")
MOVES_BASE = ("pissa", "olora", "corda")  # they subtract their initial B A from the base weights
EVA_PASSES = 10  # passes over the init batches EVA may take to converge


@dataclass(frozen=True)
class LoRA(PeftMethod):
    r: int = 8
    alpha: float = 16
    dropout: float = 0.1
    # module names (a name matches any module ending in it), or "all-linear" for every linear layer but the head
    target: str | list[str] = field(default_factory=lambda: ["query", "value"])
    rslora: bool = False  # scale by alpha/sqrt(r) instead of alpha/r (Kalajdzievski 2023)
    bias: str = "none"
    # modules trained in full beside the low-rank updates and saved with the adapter (peft's modules_to_save),
    # e.g. ["LayerNorm"]: a few thousand parameters that let the frozen encoder re-centre its features
    modules_to_save: list[str] = field(default_factory=list)
    init: Literal["default", "gaussian", "pissa", "olora", "eva", "corda", "loftq"] = "default"
    # LoRA+ (Hayou et al. 2024): the B matrices learn at this multiple of the learning rate; None: plain LoRA
    loraplus_ratio: float | None = None
    kind = "lora"
    mergeable = True
    quantizable = True
    use_dora: ClassVar[bool] = False

    def check(self, where: str) -> None:
        check(self.r >= 1, f"{where}.r={self.r}: the rank must be >= 1, e.g. 8")
        check(self.alpha > 0, f"{where}.alpha={self.alpha}: must be > 0, e.g. 2*r")
        check_target_and_dropout(self, where)
        check(self.bias in ("none", "all", "lora_only"), f"{where}.bias={self.bias!r}: use 'none', 'all' or 'lora_only'")
        check(self.loraplus_ratio is None or self.loraplus_ratio >= 1,
              f"{where}.loraplus_ratio={self.loraplus_ratio}: use a ratio >= 1 (the paper's 16), or None")
        check(not self.use_dora or self.init in ("default", "gaussian"),
              f"{where}.init={self.init!r}: DoRA starts from init='default' or 'gaussian' here; use LoRA for it")

    def check_recipe(self, recipe) -> None:
        quant = recipe.quant
        check(self.init != "loftq" or getattr(quant, "kind", None) == "4bit",
              "recipe.method.init='loftq' corrects the error of a 4-bit base: set quant=Quant4bit(), or another init")
        check(self.init not in MOVES_BASE + ("eva",) or quant is None,
              f"recipe.method.init={self.init!r} runs on a full-precision base here (pissa/olora/corda rewrite the "
              "base weights); set quant=None, or init='loftq' for a 4-bit base")
        check(self.init not in FROM_DATA or recipe.model.task != "causal_lm",
              f"recipe.method.init={self.init!r} is fitted to encoder-task batches here; use another init for "
              "causal_lm")

    def peft_config(self, ctx: Context, init: str | None = None):
        from peft import EvaConfig, LoraConfig
        from peft.tuners.lora.config import CordaConfig  # not exported at peft's top in 0.21

        init = init or self.init
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=peft_targets(self.target), exclude_modules=list(ctx.heads) or None,
                          use_rslora=self.rslora, use_dora=self.use_dora, bias=self.bias,
                          init_lora_weights=PEFT_INIT[init],
                          # rho=1: every layer keeps rank r (peft's 2 moves ranks between layers by explained variance)
                          eva_config=EvaConfig(rho=1.0) if init == "eva" else None,
                          corda_config=CordaConfig(corda_method="ipm") if init == "corda" else None,
                          task_type=ctx.peft_task_type,
                          modules_to_save=list(ctx.heads) + list(self.modules_to_save) or None)

    def wrap(self, model, ctx: Context):
        # peft skips a modules_to_save name that matches no module without a word: the run would train without it
        names = [name for name, _ in model.named_modules()]
        missing = [m for m in self.modules_to_save if not any(n == m or n.endswith("." + m) for n in names)]
        check(not missing, f"recipe.method.modules_to_save: {missing} match no module of {type(model).__name__}; "
                           "name modules it has, e.g. 'LayerNorm' (BERT) or 'norm' (Llama)")
        if self.shapes_only(model, ctx):  # the initialisation changes values, never shapes
            return self.peft_model(model, self.peft_config(ctx, "default"))
        config = self.peft_config(ctx)
        if self.init == "corda":  # covariances of the targets' inputs, taken on the base before it is wrapped
            from peft.tuners.lora.corda import preprocess_corda
            from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

            config = _maybe_include_all_linear_layers(config, model)  # preprocess_corda misses "all-linear" (0.21)
            preprocess_corda(model, config, run_model=lambda: run_batches(model, examples(on_device(ctx.batches(), model))))
        model = self.peft_model(model, config)
        if self.init == "eva":
            from peft import initialize_lora_eva_weights

            batches = on_device(ctx.batches(), model)
            initialize_lora_eva_weights(model, batches, forward_fn=limited_forward(EVA_PASSES * len(batches)),
                                        prepare_layer_inputs_fn=eva_inputs, show_progress_bar=False)
        if self.init == "loftq":
            loftq_init(model, ctx.model_path)
        if self.init in MOVES_BASE:  # save() needs them to turn the adapter into one for the untouched base
            from peft import get_peft_model_state_dict

            model.peftlab_initial = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        return model

    def shapes_only(self, model, ctx: Context) -> bool:
        """Weights on the meta device, no training batches for a data-fitted init, or no 4-bit base for loftq:
        memory planning, where only the shapes matter."""
        return (next(model.parameters()).is_meta or (self.init in FROM_DATA and ctx.batches is None)
                or (self.init == "loftq" and not ctx.quantized))

    def save(self, model, run_dir: Path) -> None:
        """pissa/olora/corda trained B A against base weights they changed: peft saves B A - B0 A0 as a rank-2r
        LoRA of the original base instead, which then loads like any LoRA adapter (merge, predict, serve)."""
        initial = getattr(model, "peftlab_initial", None)
        if initial is None:
            return super().save(model, run_dir)
        from peft import get_peft_model_state_dict
        from safetensors.torch import load_file, save_file

        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "initial"
            folder.mkdir()
            save_file({k: v.contiguous() for k, v in initial.items()}, str(folder / "adapter_model.safetensors"))
            model.save_pretrained(run_dir / self.saves, path_initial_model_for_weight_conversion=str(folder))
        # peft 0.21's conversion keeps only the LoRA matrices: the head and other modules_to_save go back in
        saved = run_dir / self.saves / "adapter_model.safetensors"
        trained = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items() if "lora_" not in k}
        save_file(load_file(str(saved)) | trained, str(saved), metadata={"format": "pt"})

    def optimizer(self, model, args):
        if self.loraplus_ratio is None:
            return None
        from peft.optimizers import create_loraplus_optimizer
        from transformers import Trainer

        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)  # the recipe's AdamW, as Trainer's
        kwargs.pop("lr", None)
        return create_loraplus_optimizer(model, optimizer_cls, lr=args.learning_rate,
                                         loraplus_lr_ratio=self.loraplus_ratio,
                                         loraplus_weight_decay=args.weight_decay, **kwargs)


def limited_forward(limit: int):
    """peft's EVA cycles over its batches until every layer's SVD converges, with no limit (on MiniLM with 2 batches
    it ran for minutes): stop it with one line instead."""
    passes = itertools.count(1)

    def forward(model, inputs):
        check(next(passes) <= limit, f"method.init='eva': the SVD of the layer inputs did not converge in {limit} "
                                     "forward passes over the init batches; train on more data or use another init")
        return model(**inputs)

    return forward


def eva_inputs(layer_input, model_input, layer_name):
    """peft's default (the layer's inputs at unmasked tokens), except that a layer fed one vector per example (BERT's
    pooler) gives them all: the token mask does not apply to it."""
    x = layer_input[0] if isinstance(layer_input, (tuple, list)) else layer_input
    return x.contiguous() if x.dim() == 2 else x[model_input.T.unbind()]  # (peft hashes it with view(-1))


@torch.no_grad()
def loftq_init(model, model_path: str) -> None:
    """LoftQ's one-step init on a 4-bit base, as peft's replace_lora_weights_loftq: B A := the best rank-r
    approximation of W - dequantize(Q(W)), W read from the model folder's safetensors. Done here because peft 0.21
    computes it on "cuda" unconditionally (no CPU), and ignores LoRA's scaling alpha/r: B is divided by it so that
    the adapter adds exactly that approximation."""
    import bitsandbytes as bnb
    from peft.tuners.lora import Linear4bit
    from peft.utils.loftq_utils import _low_rank_decomposition, _SafetensorLoader

    weights = _SafetensorLoader(model, model_path)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, Linear4bit)]
    check(bool(layers), "method.init='loftq': no LoRA layer on a 4-bit base weight; set quant=Quant4bit()")
    for name, layer in layers:
        base = layer.get_base_layer().weight
        original = weights.get_tensor(name.removeprefix("base_model.model.") + ".weight").to(base.device).float()
        residual = original - bnb.functional.dequantize_4bit(base.data, base.quant_state).float()
        low = _low_rank_decomposition(residual, reduced_rank=layer.r["default"])
        layer.lora_A["default"].weight.data = low["R"].contiguous()
        layer.lora_B["default"].weight.data = (low["L"] / layer.scaling["default"]).contiguous()


def on_device(batches: list[dict], model) -> list[dict]:
    device = next(model.parameters()).device
    return [{k: v.to(device) for k, v in batch.items()} for batch in batches]


def examples(batches: list[dict]) -> list[dict]:
    """One unpadded example per batch: CorDA's hooks take the inputs of one sequence at a time (peft 0.21)."""
    return [{k: v[i:i + 1, :int(batch["attention_mask"][i].sum())] for k, v in batch.items()}
            for batch in batches for i in range(len(batch["input_ids"]))]


def run_batches(model, batches) -> None:
    with torch.no_grad():
        for batch in batches:
            model(**batch)


@dataclass(frozen=True)
class DoRA(LoRA):
    """Weight-decomposed LoRA (Liu et al. 2024): magnitude vector + LoRA direction."""

    kind = "dora"
    use_dora: ClassVar[bool] = True

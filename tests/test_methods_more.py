"""The methods beyond test_methods.py's: LoRA's initialisations and LoRA+, VeRA, AdaLoRA, OFT and BOFT. Each trains,
reloads exactly, has its closed-form parameter count and merges where it says it can; what sets each one apart is
checked on its own (a data-fitted init, a pruned rank, a faster learning rate for B)."""

from __future__ import annotations

import json
import time

import datasets
import pytest
import torch

from peftlab import BOFT, OFT, AdaLoRA, LoRA, Quant4bit, VeRA, load_recipe
from peftlab.building import build_base, init_batches
from peftlab.errors import PeftlabError
from peftlab.methods.lora import FROM_DATA, MOVES_BASE
from peftlab.training import build_trainer, training_arguments

from conftest import D, make_tokenizer, sentiment_batch, sentiment_rows, write_recipe
from test_methods import LABELS, LAYERS, _build, _recipe, trains_counts_and_reloads
from test_recipe import REPO, _error

R = 4
LORA_QV = LAYERS * 2 * R * (D + D)  # r (in + out) per adapted layer: query and value, D x D
INPUTS = {k: v for k, v in sentiment_batch().items() if k != "labels"}


def _train_rows(n=64):
    """Tokenized training rows as the tasks make them (labels, a length column): what init_batches reads."""
    rows = sentiment_rows(n, seed=3)
    enc = make_tokenizer()([r[0] for r in rows])
    return datasets.Dataset.from_dict(dict(enc, labels=[r[1] for r in rows], length=[len(i) for i in enc["input_ids"]]))


def _batches(recipe):
    from peftlab.tasks import get_task

    return init_batches(recipe, get_task("classification"), make_tokenizer(), _train_rows(), count=2)


def _logits(model, inputs=INPUTS):
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def _base_logits(tmp_path, model_dir, quant=None):
    from peftlab import models
    from peftlab.tasks import get_task

    recipe = _recipe(tmp_path, model_dir, LoRA(r=R), quant)
    return _logits(build_base(recipe, get_task("classification"), models.resolve(recipe.model.name), LABELS))


def _merges_exactly(model, atol=1e-5):
    """peft's merge (the one peftlab's export runs) gives the unmerged model's logits."""
    before = _logits(model)
    merged = model.merge_and_unload(safe_merge=True)
    assert not any("lora_" in n or "vera_" in n or "oft_" in n or "boft_" in n for n, _ in merged.named_parameters())
    assert torch.allclose(before, _logits(merged), atol=atol)


# method, trainable count besides the head (closed form from the method's definition), trained parameter names
METHODS = [
    (LoRA(r=R, init="gaussian"), LORA_QV, ("lora_",)),
    (LoRA(r=R, rslora=True), LORA_QV, ("lora_",)),
    (LoRA(r=R, loraplus_ratio=16), LORA_QV, ("lora_",)),
    # VeRA: lambda_d (r) + lambda_b (out_features) per layer; the shared random matrices are frozen buffers
    (VeRA(r=16), LAYERS * 2 * (16 + D), ("vera_lambda",)),
    # AdaLoRA: P (r x in), Q (out x r) and the r singular values E, at init_r
    (AdaLoRA(init_r=6, target_r=3), LAYERS * 2 * 6 * (D + D + 1), ("lora_",)),
    # OFT: per layer in/b blocks, each a skew-symmetric b x b generator: b (b - 1) / 2 free values
    (OFT(block_size=16), LAYERS * 2 * (D // 16) * (16 * 15 // 2), ("oft_",)),
    # BOFT: per layer (factors) x (in/b blocks of b x b), and a scale per output
    (BOFT(block_size=4), LAYERS * 2 * (1 * (D // 4) * 4 * 4 + D), ("boft_",)),
]


@pytest.mark.slow
@pytest.mark.parametrize("method, expected, fragments", METHODS, ids=lambda x: getattr(x, "kind", None))
def test_method_trains_counts_reloads_and_merges(tmp_path, bert64, method, expected, fragments):
    model, reloaded = trains_counts_and_reloads(tmp_path, bert64, method, expected, fragments)
    assert method.mergeable
    _merges_exactly(reloaded)


@pytest.mark.slow
@pytest.mark.parametrize("init", ["pissa", "olora", "corda"])
def test_inits_from_the_base_start_at_the_base_and_save_for_the_untouched_base(tmp_path, bert64, init):
    """They take B0 A0 out of the base weights: the wrapped model starts equal to the base though B0 != 0, and the
    saved adapter (B A - B0 A0, rank 2r) reloads onto an unchanged base."""
    recipe = _recipe(tmp_path, bert64, LoRA(r=R, init=init))
    model, _, _ = _build(recipe, _batches(recipe))
    b = model.base_model.model.bert.encoder.layer[0].attention.self.query.lora_B["default"].weight
    assert b.abs().sum() > 0
    assert torch.allclose(_logits(model), _base_logits(tmp_path, bert64), atol=1e-4)
    trained, _ = trains_counts_and_reloads(tmp_path, bert64, LoRA(r=R, init=init), LORA_QV, ("lora_",),
                                           batches=_batches(recipe), atol=1e-5)
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 2 * R and saved["init_lora_weights"] is True


@pytest.mark.slow
def test_eva_fits_a_to_the_inputs(tmp_path, bert64):
    """EVA's A holds the top right-singular vectors of each layer's inputs: orthonormal rows, unlike a random A."""
    recipe = _recipe(tmp_path, bert64, LoRA(r=R, init="eva"))
    model, reloaded = trains_counts_and_reloads(tmp_path, bert64, LoRA(r=R, init="eva"), LORA_QV, ("lora_",),
                                                batches=_batches(recipe))
    fresh, _, _ = _build(recipe, _batches(recipe))
    a = fresh.base_model.model.bert.encoder.layer[1].attention.self.value.lora_A["default"].weight
    assert torch.allclose(a @ a.T, torch.eye(R), atol=1e-4)
    assert torch.allclose(_logits(fresh), _base_logits(tmp_path, bert64), atol=1e-5)  # B starts at zero
    everywhere = _recipe(tmp_path, bert64, LoRA(r=R, init="eva", target="all-linear"))  # the pooler: one row each
    assert _build(everywhere, _batches(everywhere))[0].base_model.model.bert.pooler.dense.lora_A["default"].weight.any()
    _merges_exactly(reloaded)


@pytest.mark.slow
def test_loftq_brings_the_4bit_model_closer_to_full_precision(tmp_path, bert64):
    """On a 4-bit base (CPU bitsandbytes), loftq's B A makes up part of the quantization error that plain LoRA
    (B = 0: the 4-bit base itself) leaves, in the logits of the full-precision base; then it trains and reloads."""
    full = _base_logits(tmp_path, bert64)
    plain, _, _ = _build(_recipe(tmp_path, bert64, LoRA(r=8, target="all-linear"), Quant4bit()))
    loftq, _, _ = _build(_recipe(tmp_path, bert64, LoRA(r=8, target="all-linear", init="loftq"), Quant4bit()))
    assert (_logits(loftq) - full).abs().mean() < 0.8 * (_logits(plain) - full).abs().mean()
    trains_counts_and_reloads(tmp_path, bert64, LoRA(r=R, init="loftq"), LORA_QV, ("lora_",), quant=Quant4bit())


def test_the_data_fitted_inits_get_training_batches_without_labels(tmp_path, bert64):
    recipe = _recipe(tmp_path, bert64, LoRA(r=R, init="eva"))
    batches = _batches(recipe)()
    assert [b["input_ids"].shape[0] for b in batches] == [16, 16]  # count x the recipe's batch size
    assert all(set(b) <= {"input_ids", "attention_mask", "token_type_ids"} for b in batches)
    assert set(FROM_DATA) | set(MOVES_BASE) == {"eva", "corda", "pissa", "olora"}


def test_loraplus_optimizer_gives_b_ratio_times_the_rate(tmp_path, bert64):
    recipe = _recipe(tmp_path, bert64, LoRA(r=R, loraplus_ratio=16))
    model, task, _ = _build(recipe)
    rows = _train_rows(32)
    trainer = build_trainer(recipe, task, model, make_tokenizer(), rows, rows, tmp_path / "out", None, LABELS)
    lr = recipe.train.lr
    rate = {n: g["lr"] for g in trainer.create_optimizer().param_groups for p in g["params"]
            for n, q in model.named_parameters() if q is p}
    assert {r for n, r in rate.items() if "lora_B" in n} == {16 * lr}
    assert {r for n, r in rate.items() if "lora_A" in n} == {lr}
    plain = LoRA(r=R).optimizer(model, training_arguments(recipe, tmp_path, 32, "accuracy"))
    assert plain is None  # plain LoRA: Trainer builds its own


@pytest.mark.slow
def test_adalora_prunes_ranks_while_trainer_trains(tmp_path, bert64):
    """Under Trainer, with the method's callbacks: the schedule takes the real step count, and at the end each layer
    keeps some of its init_r singular values (the rest are zeros in E), target_r x layers in all, unevenly."""
    from transformers import TrainingArguments

    from peftlab.training import make_trainer

    method = AdaLoRA(init_r=6, target_r=2, interval=2, warmup=0.1, final=0.2)
    model, task, _ = _build(_recipe(tmp_path, bert64, method))
    rows = _train_rows(64)
    args = TrainingArguments(str(tmp_path / "out"), per_device_train_batch_size=8, num_train_epochs=5, learning_rate=1e-2,
                             save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
    make_trainer(model, args=args, train_dataset=rows.remove_columns("length"), data_collator=task.collator(make_tokenizer()),
                 callbacks=method.callbacks()).train()
    assert model.peft_config["default"].total_step == 5 * 64 // 8
    kept = {n: int((p != 0).sum()) for n, p in model.named_parameters() if "lora_E" in n}
    assert len(kept) == LAYERS * 2 and sum(kept.values()) == 2 * len(kept)
    assert len(set(kept.values())) > 1  # the budget moved between layers
    assert model.peft_config["default"].rank_pattern is None  # checkpoints keep init_r (RankSchedule says why)


@pytest.mark.skipif(torch.cuda.is_available(), reason="peft's BOFT CUDA extension may build on a GPU machine")
def test_boft_on_cpu_takes_the_pytorch_path_quickly_and_refuses_more_factors(tmp_path, bert64):
    """peft tries to build its CUDA extension, gives up, and would cut the butterfly to 1 factor silently."""
    start = time.perf_counter()
    model, _, _ = _build(_recipe(tmp_path, bert64, BOFT(block_size=4)))
    layer = model.base_model.model.bert.encoder.layer[0].attention.self.query
    assert layer.fbd_cuda_available is False and time.perf_counter() - start < 60
    with pytest.raises(PeftlabError, match="method.butterfly_factors=2: peft's BOFT CUDA extension") as info:
        _build(_recipe(tmp_path, bert64, BOFT(block_size=4, butterfly_factors=2)))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("method, expected", [
    ("LoRA(loraplus_ratio=0.5)", "method.loraplus_ratio=0.5: use a ratio >= 1"),
    ("LoRA(init='svd')", "method.init='svd': expected one of 'default'"),
    ("DoRA(init='pissa')", "method.init='pissa': DoRA starts from init='default' or 'gaussian'"),
    ("LoRA(init='loftq')", "method.init='loftq' corrects the error of a 4-bit base: set quant=Quant4bit()"),
    ("VeRA(r=0)", "method.r=0: the rank must be >= 1"),
    ("VeRA(d_initial=0)", "method.d_initial=0: must be > 0"),
    ("AdaLoRA(init_r=4, target_r=8)", "method.target_r=8: use 1..init_r=4"),
    ("AdaLoRA(warmup=0.5, final=0.5)", "method.warmup=0.5, final=0.5: use fractions >= 0 that sum below 1"),
    ("AdaLoRA(interval=0)", "method.interval=0: must be >= 1"),
    ("OFT(block_size=1)", "method.block_size=1: use >= 2"),
    ("BOFT(block_size=3)", "method.block_size=3: use an even size"),
    ("BOFT(butterfly_factors=0)", "method.butterfly_factors=0: must be >= 1"),
])
def test_bad_fields_give_one_line(tmp_path, tiny_bert, method, expected):
    assert expected in _error(write_recipe(tmp_path / "r.py", tiny_bert, method=method))


@pytest.mark.parametrize("method, expected", [
    ("LoRA(init='pissa')", "init='pissa' runs on a full-precision base here"),
    ("LoRA(init='eva')", "init='eva' runs on a full-precision base here"),
    ("VeRA()", "VeRA cannot run on a quantized base"),
    ("AdaLoRA()", "AdaLoRA cannot run on a quantized base"),
    ("BOFT()", "BOFT cannot run on a quantized base"),
])
def test_quantized_combinations_fail_at_load(tmp_path, tiny_bert, method, expected):
    path = write_recipe(tmp_path / "r.py", tiny_bert, method=method, extra="quant=Quant4bit(),")
    assert expected in _error(path)


NEW_RECIPES = {"pissa": "lora", "olora": "lora", "eva": "lora", "corda": "lora", "loftq": "lora",
               "loraplus": "lora", "rslora": "lora", "vera": "vera", "adalora": "adalora", "oft": "oft", "boft": "boft"}


@pytest.mark.parametrize("name, kind", NEW_RECIPES.items())
def test_new_recipes_load_like_lora_sst2(name, kind):
    recipe = load_recipe(REPO / "recipes" / f"{name}_sst2.py")
    lora = load_recipe(REPO / "recipes" / "lora_sst2.py")
    assert recipe.name == f"{name}_sst2" and recipe.method.kind == kind
    assert recipe.data == lora.data and recipe.model == lora.model  # the same base recipe
    # CorDA: every linear layer of the encoder by name, BERT's pooler left out (peft's CorDA hooks, README)
    encoder_linear = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
    assert getattr(recipe.method, "target", None) == (encoder_linear if name == "corda" else lora.method.target)
    assert name in {"loftq"} or recipe.quant is None


@pytest.mark.parametrize("method", [LoRA(target="query"), VeRA(target="query"), AdaLoRA(target="query"),
                                    OFT(target="query"), BOFT(target="query")])
def test_one_module_name_matches_as_a_suffix(tmp_path, tiny_bert, method):
    """target="query" adapts every layer's query, as a list of names does (peft alone would read the string as a
    regex on the full module name and find nothing)."""
    model, _, _ = _build(_recipe(tmp_path, tiny_bert, method))
    adapted = {name.split(".query.")[0] for name, p in model.named_parameters()
               if p.requires_grad and ".query." in name}
    assert len(adapted) == LAYERS

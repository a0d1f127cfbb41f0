"""Every peft-backed method, also on a 4-bit/8-bit base: trains, reloads exactly, trains only what it should,
and has the parameter count of its closed-form formula."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from peftlab import (
    IA3,
    DoRA,
    FullFineTuning,
    LoRA,
    PrefixTuning,
    PromptTuning,
    Quant4bit,
    Quant8bit,
    load_recipe,
    models,
)
from peftlab.building import build_base, build_model
from peftlab.errors import PeftlabError
from peftlab.measure import count_parameters, quantized_storage
from peftlab.tasks import get_task

from conftest import D, write_recipe
from conftest import sentiment_batch as _batch
from conftest import train_steps as _train

LAYERS, LABELS = 2, ["negative", "positive"]
HEAD = D * 2 + 2  # classifier weight + bias


def _recipe(tmp_path, model_dir, method, quant=None):
    recipe = load_recipe(write_recipe(tmp_path / "r.py", model_dir))
    recipe = dataclasses.replace(recipe, method=method, quant=quant)
    from peftlab.recipe import validate

    validate(recipe)
    return recipe


def _build(recipe, batches=None):
    task = get_task(recipe.model.task)
    resolved = models.resolve(recipe.model.name)
    return build_model(recipe, task, resolved, LABELS, batches=batches), task, resolved


# method, expected trainable count besides the head, name fragments of the parameters that may train
METHODS = [
    (LoRA(r=4, target=["query", "value"]), LAYERS * 2 * 4 * (D + D), ("lora_",)),
    (LoRA(r=2, target="all-linear"), LAYERS * (4 * 2 * (D + D) + 2 * 2 * (D + 2 * D)) + 2 * (D + D), ("lora_",)),
    # LayerNorms trained beside LoRA: two per layer plus the embeddings', weight and bias each
    (LoRA(r=4, target=["query", "value"], modules_to_save=["LayerNorm"]),
     LAYERS * 2 * 4 * (D + D) + (2 * LAYERS + 1) * 2 * D, ("lora_",)),
    (DoRA(r=4, target=["query", "value"]), LAYERS * 2 * (4 * (D + D) + D), ("lora_",)),
    # IA3 on BERT (peft default): key, value (out_features) + attention.output.dense, output.dense (feed-forward:
    # in_features d and 2d)
    (IA3(), LAYERS * (D + D + D + 2 * D), ("ia3_",)),
    (PrefixTuning(num_virtual_tokens=5), 5 * LAYERS * 2 * D, ("prompt_encoder",)),
    (PrefixTuning(num_virtual_tokens=5, projection=True, projection_hidden=16),
     5 * D + (D * 16 + 16) + (16 * LAYERS * 2 * D + LAYERS * 2 * D), ("prompt_encoder",)),
    (PromptTuning(num_virtual_tokens=6), 6 * D, ("prompt_encoder",)),
]


@pytest.mark.slow
@pytest.mark.parametrize("method, expected, fragments", METHODS, ids=lambda x: getattr(x, "kind", None))
def test_method_trains_counts_and_reloads(tmp_path, bert64, method, expected, fragments):
    trains_counts_and_reloads(tmp_path, bert64, method, expected, fragments)


def trains_counts_and_reloads(tmp_path, model_dir, method, expected, fragments, quant=None, batches=None, atol=1e-6):
    """The method's trainable count is `expected` + the head, only its own parameters (and the head) train, the loss
    falls, and its saved adapter on a fresh base gives the trained model's logits. Returns (trained, reloaded)."""
    recipe = _recipe(tmp_path, model_dir, method, quant)
    model, task, resolved = _build(recipe, batches)
    params = count_parameters(model)
    assert params["trainable_params"] == expected + HEAD
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(any(f in n for f in fragments + ("modules_to_save",)) for n in trainable), trainable
    assert any("classifier" in n for n in trainable)  # the head trains with every method

    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    first, last = _train(model)
    assert last < 0.9 * first
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("classifier" not in n for n in changed)  # the method's own parameters moved, not just the head

    method.save(model, tmp_path)
    reloaded = method.load(build_base(recipe, task, resolved, LABELS), tmp_path).eval()
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, reloaded(**batch).logits, atol=atol)
    return model, reloaded


def test_modules_to_save_that_match_nothing_are_an_error(tmp_path, bert64):
    with pytest.raises(PeftlabError, match=r"modules_to_save: \['LayerNrom'\] match no module") as info:
        _build(_recipe(tmp_path, bert64, LoRA(r=4, modules_to_save=["LayerNrom"])))
    assert "\n" not in str(info.value)


def test_full_fine_tuning_trains_everything(tmp_path, bert64):
    model, _, _ = _build(_recipe(tmp_path, bert64, FullFineTuning()))
    params = count_parameters(model)
    assert params["trainable_params"] == params["total_params"]


# upper bound of bits/param: 4 + 8/64 (+ tiny nested scales) with double quantization, 4 + 32/64 without,
# 8 + 32/64 for int8 (one float scale per row of 64)
@pytest.mark.slow
@pytest.mark.parametrize("quant, bits, most", [(Quant4bit(), 4, 4.2), (Quant4bit(type="fp4", double_quant=False), 4, 4.5),
                                               (Quant8bit(), 8, 8.5)], ids=["nf4-dq", "fp4", "int8"])
def test_lora_on_quantized_base(tmp_path, bert64, quant, bits, most):
    import bitsandbytes as bnb

    model, _, _ = _build(_recipe(tmp_path, bert64, LoRA(r=4, target=["query", "value"]), quant))
    layer_type = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    query = model.base_model.model.bert.encoder.layer[0].attention.self.query.base_layer
    assert isinstance(query, layer_type)
    weight = query.weight
    assert weight.numel() * weight.element_size() * 8 == bits * D * D  # packed storage: exactly `bits` per value
    assert not isinstance(model.base_model.model.classifier.original_module, layer_type)  # the head stays full
    storage = quantized_storage(model)
    assert storage["quantized_params"] == LAYERS * (4 * D * D + 2 * 2 * D * D) + D * D  # encoder + pooler
    assert bits < storage["bits_per_param"] <= most
    assert count_parameters(model)["trainable_params"] == LAYERS * 2 * 4 * 2 * D + HEAD
    first, last = _train(model, steps=30)
    assert last < 0.9 * first


@pytest.mark.parametrize("quant", [Quant4bit(), Quant8bit()], ids=["nf4", "int8"])
def test_modules_to_save_stay_full_precision_on_a_quantized_base(tmp_path, bert64, quant):
    # a module in the middle of the tree ("bert.pooler.dense") was quantized before, and peft then failed to make
    # its 4/8-bit copy trainable
    import bitsandbytes as bnb

    model, _, _ = _build(_recipe(tmp_path, bert64, LoRA(r=4, modules_to_save=["pooler"]), quant))
    pooler = model.base_model.model.bert.pooler.modules_to_save["default"].dense
    assert type(pooler) is torch.nn.Linear and pooler.weight.requires_grad
    assert isinstance(model.base_model.model.bert.encoder.layer[0].output.dense, (bnb.nn.Linear4bit,
                                                                                   bnb.nn.Linear8bitLt))
    before = pooler.weight.detach().clone()
    first, last = _train(model, steps=10)
    assert not torch.equal(before, pooler.weight) and last < first


def test_double_quantization_stores_less(tmp_path, bert64):
    def bits(quant):
        model, _, _ = _build(_recipe(tmp_path, bert64, LoRA(r=4), quant))
        return quantized_storage(model)["bits_per_param"]

    assert bits(Quant4bit(double_quant=True)) < bits(Quant4bit(double_quant=False))


@pytest.mark.parametrize("method", [PrefixTuning(), PromptTuning(), FullFineTuning()], ids=lambda m: m.kind)
def test_unsupported_quantized_combinations_fail_at_load(tmp_path, bert64, method):
    with pytest.raises(PeftlabError, match="quantized base") as info:
        _recipe(tmp_path, bert64, method, Quant4bit())
    assert "\n" not in str(info.value)

"""Bottleneck adapters (Houlsby, Pfeiffer) on tiny BERT and Llama models: identity start, parameter count,
learning, save/load, 4-bit base, field checks, and one run through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peftlab import predict
from peftlab.artifacts import load_trained
from peftlab.errors import PeftlabError
from peftlab.methods import Houlsby, Pfeiffer
from peftlab.methods.base import Context
from peftlab.recipe import load_recipe

from conftest import make_bert, make_tokenizer, run_recipe, sentiment_rows, write_recipe

BERT_CTX = Context(("classifier",), "SEQ_CLS", False)


def bert(path: Path, **kwargs):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, **kwargs).eval()


def llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, num_labels=2)
    return LlamaForSequenceClassification(config).eval()


def batch(n: int = 16, seed: int = 3) -> dict:
    rows = sentiment_rows(n, seed)
    enc = make_tokenizer()([text for text, _ in rows], padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": torch.tensor([label for _, label in rows])}


def adapters(model) -> dict:
    return {name: module.adapter for name, module in model.named_modules() if hasattr(module, "adapter")}


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits


def train_steps(model, inputs, steps: int = 30, lr: float = 1e-2) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


# ------------------------------------------------------------------------------------------ identity start

@pytest.mark.parametrize("method", [Houlsby(reduction_factor=4), Pfeiffer(reduction_factor=4, non_linearity="gelu")])
def test_bert_starts_as_the_base_and_adapters_are_live(tiny_bert, method):
    inputs = batch()
    base = bert(tiny_bert)
    before = logits(base, inputs)
    model = method.wrap(base, BERT_CTX)
    assert torch.equal(logits(model, inputs), before)
    # the identity is the zero up-projection, not a hook that never runs (random weights: a constant shift
    # would vanish in the LayerNorm that follows)
    with torch.no_grad():
        for adapter in adapters(model).values():
            adapter.up.weight.normal_(std=1.0)
    assert not torch.allclose(logits(model, inputs), before)


def test_llama_starts_as_the_base(tiny_bert):
    inputs = {"input_ids": torch.randint(1, 40, (4, 7), generator=torch.Generator().manual_seed(0)),
              "attention_mask": torch.ones(4, 7, dtype=torch.long)}
    base = llama()
    before = logits(base, inputs)
    model = Houlsby(reduction_factor=4).wrap(base, Context(("score",), "SEQ_CLS", False))
    assert sorted(adapters(model)) == ["model.layers.0.mlp.down_proj", "model.layers.0.self_attn.o_proj",
                                       "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.o_proj"]
    assert torch.equal(logits(model, inputs), before)


# ----------------------------------------------------------------------------------------- what trains

@pytest.mark.parametrize("method, per_layer", [(Houlsby(reduction_factor=4), 2), (Pfeiffer(reduction_factor=4), 1)])
def test_only_adapters_and_head_train(tiny_bert, method, per_layer):
    model = method.wrap(bert(tiny_bert), BERT_CTX)
    d, m, layers = 32, 32 // 4, 2
    head = 32 * 2 + 2
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert all(".adapter." in n or n.startswith("classifier.") for n in trainable), sorted(trainable)
    assert sum(trainable.values()) == layers * per_layer * (2 * d * m + m + d) + head
    assert len(adapters(model)) == layers * per_layer


def test_training_lowers_the_loss_and_leaves_the_base_alone(tiny_bert):
    model = Houlsby(reduction_factor=4).wrap(bert(tiny_bert), BERT_CTX)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    losses = train_steps(model, batch())
    assert losses[-1] < 0.8 * losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_float32_adapter_on_a_bfloat16_base(tiny_bert):
    base = bert(tiny_bert, dtype=torch.bfloat16)
    inputs = batch()
    before = logits(base, inputs)
    model = Pfeiffer(reduction_factor=4).wrap(base, BERT_CTX)
    assert {p.dtype for a in adapters(model).values() for p in a.parameters()} == {torch.float32}
    after = logits(model, inputs)
    assert after.dtype == torch.bfloat16 and torch.equal(after, before)


# ------------------------------------------------------------------------------------------- save / load

def test_save_load_gives_identical_logits_and_restores_the_head(tiny_bert, tmp_path):
    inputs = batch()
    model = Pfeiffer(reduction_factor=4).wrap(bert(tiny_bert), BERT_CTX)
    train_steps(model, inputs, steps=5)
    model.eval()
    Pfeiffer(reduction_factor=4).save(model, tmp_path)
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["bottleneck_config.json", "bottleneck_model.safetensors"]
    config = json.loads((tmp_path / "adapter" / "bottleneck_config.json").read_text())
    assert config["kind"] == "pfeiffer" and config["hidden_size"] == 32 and config["reduction_factor"] == 4
    assert config["placements"] == ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]

    torch.manual_seed(123)  # a fresh head that differs from the trained one
    fresh = bert(tiny_bert)
    assert not torch.equal(fresh.classifier.weight, model.classifier.weight)
    loaded = Pfeiffer(reduction_factor=4).load(fresh, tmp_path).eval()
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))
    trained = adapters(model)
    for name, adapter in adapters(loaded).items():  # trained (non-zero) adapter weights came back
        assert adapter.up.weight.abs().sum() > 0 and torch.equal(adapter.up.weight, trained[name].up.weight)


def test_load_refuses_a_different_method(tiny_bert, tmp_path):
    model = Pfeiffer(reduction_factor=4).wrap(bert(tiny_bert), BERT_CTX)
    Pfeiffer(reduction_factor=4).save(model, tmp_path)
    with pytest.raises(PeftlabError, match="'pfeiffer' adapter, not 'houlsby'"):
        Houlsby(reduction_factor=4).load(bert(tiny_bert), tmp_path)
    with pytest.raises(PeftlabError, match="reduction_factor differ"):
        Pfeiffer(reduction_factor=8).load(bert(tiny_bert), tmp_path)


def test_load_is_strict_about_the_weights_file(tiny_bert, tmp_path):
    from safetensors.torch import load_file, save_file

    model = Houlsby(reduction_factor=4).wrap(bert(tiny_bert), BERT_CTX)
    Houlsby(reduction_factor=4).save(model, tmp_path)
    path = tmp_path / "adapter" / "bottleneck_model.safetensors"
    weights = load_file(str(path))
    assert sum(k.startswith("classifier.") for k in weights) == 2 and len(weights) == 4 * 4 + 2
    dropped = dict(weights)
    dropped.pop("classifier.bias")
    save_file(dropped, str(path))
    with pytest.raises(PeftlabError, match=r"missing \['classifier.bias'\], unexpected \[\]"):
        Houlsby(reduction_factor=4).load(bert(tiny_bert), tmp_path)
    save_file(weights | {"bert.pooler.dense.weight": torch.zeros(32, 32)}, str(path))
    with pytest.raises(PeftlabError, match=r"missing \[\], unexpected \['bert.pooler.dense.weight'\]"):
        Houlsby(reduction_factor=4).load(bert(tiny_bert), tmp_path)


# ------------------------------------------------------------------------------------------- 4-bit base

def test_houlsby_on_a_4bit_base(tmp_path):
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    path = make_bert(tmp_path / "bert64", hidden=64)  # bnb's 4-bit CPU kernels need blocks of 64 inputs
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                               llm_int8_skip_modules=["classifier"])
    # Kept in train mode (dropout off) throughout: bitsandbytes 0.50 on CPU repacks 4-bit weights for inference
    # at the first eval-mode no-grad forward, one way, and a later forward whose input requires grad then fails
    # in Linear4bit with a bias ("a view of a leaf Variable ... in-place"). CUDA has no such path.
    model = bert(path, quantization_config=quant, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    assert isinstance(model.bert.encoder.layer[0].output.dense, bnb.nn.Linear4bit)
    inputs = batch()
    before = logits(model, inputs)
    model = Houlsby(reduction_factor=4).wrap(model, Context(("classifier",), "SEQ_CLS", True))
    # compared under no_grad on both sides: bnb picks another (equally valid) kernel when inputs require grad
    assert torch.equal(logits(model, inputs), before)
    assert all(isinstance(model.get_submodule(n), bnb.nn.Linear4bit) for n in adapters(model))

    model(**inputs).loss.backward()
    ups = [a.up.weight.grad for a in adapters(model).values()]
    assert len(ups) == 4 and all(g is not None and g.abs().sum() > 0 for g in ups)
    # down gets gradient through up, which starts at zero: non-zero after the first step
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    opt.step()
    opt.zero_grad()
    model(**inputs).loss.backward()
    assert all(a.down.weight.grad.abs().sum() > 0 for a in adapters(model).values())
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)

    Houlsby(reduction_factor=4).save(model, tmp_path / "run")
    fresh = bert(path, quantization_config=quant, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    loaded = Houlsby(reduction_factor=4).load(fresh, tmp_path / "run")
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))


# --------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("method, message", [
    ("Houlsby(reduction_factor=0)", "recipe.method.reduction_factor=0: must be >= 1"),
    ("Pfeiffer(dropout=1.0)", "recipe.method.dropout=1.0: use a value in [0, 1)"),
    ("Pfeiffer(non_linearity='sigmoid')", "recipe.method.non_linearity='sigmoid': expected one of 'relu'"),
])
def test_bad_fields_fail_at_recipe_load(tmp_path, tiny_bert, method, message):
    recipe = write_recipe(tmp_path / "r.py", tiny_bert, method=method)
    with pytest.raises(PeftlabError) as err:
        load_recipe(recipe)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_reduction_factor_above_hidden_size_fails_at_wrap(tiny_bert):
    with pytest.raises(PeftlabError) as err:
        Houlsby(reduction_factor=64).wrap(bert(tiny_bert), BERT_CTX)
    assert "method.reduction_factor=64" in str(err.value) and "<= 32" in str(err.value)


def test_unsupported_model_names_the_families():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification(GPT2Config(vocab_size=40, n_embd=32, n_layer=1, n_head=2,
                                                     bos_token_id=0, eos_token_id=0))
    with pytest.raises(PeftlabError, match="no place for adapters in GPT2ForSequenceClassification; supported: BERT"):
        Pfeiffer().wrap(model, Context(("score",), "SEQ_CLS", False))


# ------------------------------------------------------------------------------------------- whole pipeline

def test_houlsby_through_the_cli(tmp_path, tiny_bert, data_dir, capsys):
    """Plumbing, not learning: on the random tiny BERT the [CLS] state barely sees the other tokens, so
    output-side adapters learn the task slowly (accuracy stays near chance for 10 epochs; learning is
    checked above on a fixed batch). Two epochs exercise training, best-checkpoint reload, save and predict."""
    recipe = write_recipe(tmp_path / "r.py", tiny_bert, method="Houlsby(reduction_factor=4)",
                          train="epochs=2, lr=1e-2, batch_size=16, logging_steps=8")
    run_dir = run_recipe(tmp_path, recipe, data_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["trainable_params"] == 2 * 2 * (2 * 32 * 8 + 8 + 32) + 66
    assert sorted(p.name for p in (run_dir / "adapter").iterdir()) == ["bottleneck_config.json",
                                                                        "bottleneck_model.safetensors"]
    assert not (run_dir / "checkpoints").exists()

    trained = load_trained(run_dir)
    ups = [a.up.weight for a in adapters(trained.model).values()]
    assert len(ups) == 4 and all(w.abs().sum() > 0 for w in ups)  # trained adapters came back, not zero init
    assert not torch.equal(trained.model.classifier.weight, bert(tiny_bert).classifier.weight)
    capsys.readouterr()
    assert predict.main([str(run_dir), "--eval", "--data-dir", str(data_dir)]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval"]
    assert scored["accuracy"] == pytest.approx(metrics["task_metrics"]["accuracy"])
    assert scored["loss"] == pytest.approx(metrics["task_metrics"]["loss"], abs=1e-5)


def test_houlsby_on_4bit_through_the_cli(tmp_path, data_dir, capsys):
    """Trainer refuses quantized models that peft did not wrap; peftlab.training lets native adapters through."""
    path = make_bert(tmp_path / "bert64", hidden=64)
    recipe = write_recipe(tmp_path / "r.py", path, method="Houlsby(reduction_factor=4)",
                          train="max_steps=4, batch_size=16", extra="quant=Quant4bit(),")
    run_dir = run_recipe(tmp_path, recipe, data_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 4 < metrics["quantized_storage"]["bits_per_param"] < 4.2
    capsys.readouterr()
    assert predict.main([str(run_dir), "--eval", "--data-dir", str(data_dir)]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval"]
    assert scored["loss"] == pytest.approx(metrics["task_metrics"]["loss"], abs=1e-5)

"""Memory levers on tiny models: each gives the same losses and gradients on and off (peftlab/levers.py)."""

from __future__ import annotations

import json
import os

import pytest
import torch

import peftlab
from peftlab import levers, load_recipe
from peftlab.errors import PeftlabError
from peftlab.methods.base import Context
from peftlab.plan import current_rss

from conftest import pinned_freed_heap, run_recipe, write_recipe

VOCAB = 3000


def tiny_llama(seed: int = 0, vocab: int = VOCAB):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, initializer_range=0.2)
    return LlamaForCausalLM(config)


def tiny_bert_classifier(path):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)


def wrapped(model, method: str, task_type: str = "CAUSAL_LM", heads=()):
    model = eval(method, vars(peftlab)).wrap(model, Context(heads, task_type, False, ""))
    for name, param in model.named_parameters():  # adapters that start as the identity would hide differences
        if param.requires_grad and ("lora_B" in name or "adapter.up" in name):
            torch.nn.init.normal_(param, std=0.1)
    return model.train()


def lm_batch():
    """Three rows: prompt positions unlabelled, the last row padded."""
    ids = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(1))
    labels, mask = ids.clone(), torch.ones_like(ids)
    labels[:, :8] = -100
    labels[2, 15:], mask[2, 15:] = -100, 0
    return {"input_ids": ids, "attention_mask": mask}, labels


def loss_and_grads(model, compute):
    torch.manual_seed(5)  # the same dropout masks on every call
    loss = compute()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return loss.item(), grads


def assert_same(a, b, atol=1e-5):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert loss_a == pytest.approx(loss_b, abs=atol)
    assert grads_a and set(grads_a) == set(grads_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=atol, rtol=1e-4, msg=name)


# ------------------------------------------------------------------------------- label-only logits

def labelled_loss(model, inputs, labels):
    with levers.hidden_states_as_logits(model) as lm_head:
        hidden = model(**inputs).logits
    sums, counts = levers.labelled_nll(hidden[:, -labels.shape[1]:], labels, lm_head)
    return sums.sum() / counts.sum()


@pytest.mark.parametrize("method", ["FullFineTuning()", "LoRA(r=4, target='all-linear')",
                                    "DoRA(r=4, target='all-linear')", "PrefixTuning(num_virtual_tokens=4)",
                                    "PromptTuning(num_virtual_tokens=4)", "Houlsby()"])
def test_labelled_loss_equals_the_models_own(method, monkeypatch):
    """Chunked (7 tokens a chunk here), output layer on labelled positions only: the model's loss and gradients,
    the tied output/input embedding included for full fine-tuning; peft's prefixes and virtual tokens apply."""
    monkeypatch.setattr(levers, "LOSS_CHUNK_TOKENS", 7)
    model = wrapped(tiny_llama(), method)
    inputs, labels = lm_batch()
    own = loss_and_grads(model, lambda: model(**inputs, labels=labels).loss)
    mine = loss_and_grads(model, lambda: labelled_loss(model, inputs, labels))
    assert_same(own, mine)
    if method == "FullFineTuning()":
        assert "model.embed_tokens.weight" in mine[1]  # the shared weight gets the output layer's gradient too
    assert isinstance(model.get_output_embeddings() if not hasattr(model, "get_base_model")
                      else model.get_base_model().get_output_embeddings(), torch.nn.Linear)  # restored


def test_labelled_loss_with_packed_rows():
    model = wrapped(tiny_llama(), "LoRA(r=4, target='all-linear')")
    inputs, labels = lm_batch()
    positions = torch.cat([torch.arange(12), torch.arange(8)]).repeat(3, 1)  # two examples per row
    labels[:, 12] = -100  # no loss across the boundary
    inputs = {"input_ids": inputs["input_ids"], "position_ids": positions, "use_cache": False}
    assert_same(loss_and_grads(model, lambda: model(**inputs, labels=labels).loss),
                loss_and_grads(model, lambda: labelled_loss(model, inputs, labels)))


def test_labelled_loss_on_a_4bit_base(tmp_path):
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    tiny_llama().save_pretrained(tmp_path)
    config = peftlab.Quant4bit().bnb_config(["lm_head"])
    base = prepare_model_for_kbit_training(AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=config),
                                           use_gradient_checkpointing=False)
    model = wrapped(base, "LoRA(r=4, target='all-linear')")
    inputs, labels = lm_batch()
    assert_same(loss_and_grads(model, lambda: model(**inputs, labels=labels).loss),
                loss_and_grads(model, lambda: labelled_loss(model, inputs, labels)), atol=1e-4)


def test_evaluation_perplexity_unchanged():
    """Trainer's evaluation through the label-only loss gives the perplexity the full-logits path gives."""
    from datasets import Dataset
    from transformers import TrainingArguments

    from peftlab.tasks import causal_lm, metrics_for
    from peftlab.training import make_trainer

    model = wrapped(tiny_llama(), "LoRA(r=4, target='all-linear')").eval()
    (inputs, labels), n = lm_batch(), 20
    rows = [{"input_ids": inputs["input_ids"][i][:n - 5 * (i == 2)].tolist(),
             "labels": labels[i][:n - 5 * (i == 2)].tolist()} for i in range(3)]
    dataset = Dataset.from_list(rows * 3).add_column("example_id", range(9))

    class Pad:
        pad_token_id = 0

    def perplexity(labelled: bool) -> dict:
        args = TrainingArguments(output_dir="/tmp/peftlab-test-levers", per_device_eval_batch_size=4, report_to=[],
                                 disable_tqdm=True, use_cpu=True)
        trainer = make_trainer(model, labelled_logits=labelled, args=args, data_collator=causal_lm.collator(Pad()),
                               compute_metrics=metrics_for(causal_lm, dataset, None, [], None),
                               preprocess_logits_for_metrics=causal_lm.preprocess_logits)
        assert trainer.labelled_logits == labelled
        return trainer.evaluate(dataset)

    full, mine = perplexity(False), perplexity(True)
    assert mine["eval_perplexity"] == pytest.approx(full["eval_perplexity"], rel=1e-5)
    assert mine["eval_loss"] == pytest.approx(full["eval_loss"], rel=1e-5)


# --------------------------------------------------------------------------------- checkpointing

def checkpointing_on(model):
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    target.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert target.is_activation_checkpointing


@pytest.mark.parametrize("method", ["FullFineTuning()", "LoRA(r=4, target='all-linear')",
                                    "DoRA(r=4, target='all-linear')", "IA3()", "Houlsby()", "Pfeiffer()",
                                    "PromptTuning(num_virtual_tokens=4)"])
def test_gradient_checkpointing_same_loss_and_gradients_causal_lm(method):
    model = wrapped(tiny_llama(), method)
    inputs, labels = lm_batch()
    off = loss_and_grads(model, lambda: labelled_loss(model, inputs, labels))
    checkpointing_on(model)
    assert_same(off, loss_and_grads(model, lambda: labelled_loss(model, inputs, labels)))


@pytest.mark.parametrize("method", ["FullFineTuning()", "LoRA(r=4, target=['query', 'value'])", "IA3()",
                                    "Houlsby()"])
def test_gradient_checkpointing_same_loss_and_gradients_encoder(tiny_bert, method):
    """With dropout on: non-reentrant checkpointing replays the same random masks."""
    model = wrapped(tiny_bert_classifier(tiny_bert), method, "SEQ_CLS", ("classifier",))
    batch = {"input_ids": torch.randint(5, 30, (4, 12), generator=torch.Generator().manual_seed(0)),
             "labels": torch.tensor([0, 1, 1, 0])}
    off = loss_and_grads(model, lambda: model(**batch).loss)
    checkpointing_on(model)
    assert_same(off, loss_and_grads(model, lambda: model(**batch).loss))


def test_checkpointing_defaults_and_prefix_refusal(tmp_path, tiny_bert):
    from peftlab import Data, LoRA, Model, PrefixTuning, Recipe, Train

    def recipe(task, method, setting="auto"):
        return Recipe("r", Model("m", task=task), Data("d"), method, Train(gradient_checkpointing=setting))

    assert levers.gradient_checkpointing(recipe("causal_lm", LoRA()))
    assert not levers.gradient_checkpointing(recipe("classification", LoRA()))
    assert not levers.gradient_checkpointing(recipe("causal_lm", PrefixTuning()))
    assert levers.gradient_checkpointing(recipe("classification", LoRA(), True))
    path = write_recipe(tmp_path / "r.py", tiny_bert, method="PrefixTuning()",
                        train="gradient_checkpointing=True")
    with pytest.raises(PeftlabError, match="gradient_checkpointing=True.*PrefixTuning"):
        load_recipe(path)


# --------------------------------------------------------------------------------- micro-batches

def test_micro_batches_give_the_same_training(tmp_path, tiny_bert, data_dir):
    """Batch 8 computed in micro-batches of 2 (4 accumulated): the same steps, losses and trained weights (dropout
    off), with length buckets still forming the same batches of 8. IA3, not LoRA: LoRA's zero-initialised B leaves
    A with gradients near zero, which Adam's normalisation turns into float noise of the learning rate's size."""
    from safetensors.torch import load_file

    def run(name, micro):
        recipe = write_recipe(tmp_path / f"{name}.py", tiny_bert, name=name, method="IA3()",
                              train=f"epochs=1, lr=5e-3, batch_size=8, logging_steps=4, micro_batch_size={micro}",
                              ).read_text().replace('task="classification",', 'task="classification", dropout=0.0,')
        (tmp_path / f"{name}.py").write_text(recipe)
        run_dir = run_recipe(tmp_path / name, tmp_path / f"{name}.py", data_dir, "--set", "data.train_limit=64")
        history = json.loads((run_dir / "log_history.json").read_text())
        return history, load_file(run_dir / "adapter" / "adapter_model.safetensors")

    (whole, weights), (micro, micro_weights) = run("whole", "None"), run("micro", 2)
    losses = [e["loss"] for e in whole if "loss" in e]
    assert len(losses) == 2 and losses == pytest.approx([e["loss"] for e in micro if "loss" in e], rel=1e-4)
    assert whole[-1]["step"] == micro[-1]["step"] == 8
    moved = max((w - 1).abs().max().item() for n, w in weights.items() if "ia3" in n)
    assert moved > 0.01  # IA3 vectors start at 1; 8 Adam steps of lr 5e-3 move them by up to 0.04
    # Near the untrained model's 0.693 loss the gradients are small differences of large per-example terms, so
    # float rounding (micro-batches pad to other lengths) is relatively large in them, and Adam's normalisation
    # turns it into updates: agreement within ~1 % of how far the weights moved, not to float precision.
    for name in weights:
        difference = (weights[name] - micro_weights[name]).abs()
        assert difference.max() < moved / 20 and difference.mean() < moved / 200, name


def test_micro_batch_must_divide_the_batch(tmp_path, tiny_bert):
    path = write_recipe(tmp_path / "r.py", tiny_bert, train="batch_size=8, micro_batch_size=3")
    with pytest.raises(PeftlabError, match=r"micro_batch_size=3: must divide batch_size=8, e.g. 4"):
        load_recipe(path)


# ------------------------------------------------------------------------------ batch sizes, budget

def _recipe(**train):
    from peftlab import Data, Model, Recipe, Train

    return Recipe("r", Model("m", task="causal_lm"), Data("d", max_length=384, max_new_tokens=200),
                  peftlab.FullFineTuning(), Train(batch_size=8, eval_batch_size=16, **train))


def test_evaluation_and_generation_batches_follow_the_micro_batch():
    assert levers.eval_batch_size(_recipe(), num_layers=30) == 8  # checkpointed: one micro-batch
    assert levers.eval_batch_size(_recipe(gradient_checkpointing=False), num_layers=30) == 16  # eval_batch_size caps
    assert levers.eval_batch_size(_recipe(micro_batch_size=2), num_layers=30) == 2
    assert levers.generation_batch_size(_recipe()) == 8 * 384 // (384 + 200)
    assert levers.generation_batch_size(_recipe(micro_batch_size=1)) == 1
    assert levers.generation_batch_size(_recipe(micro_batch_size=1, generation_batch_size=64)) == 64  # as given
    with pytest.raises(PeftlabError, match=r"generation_batch_size=0: use a positive size or None"):
        _recipe(generation_batch_size=0).train.check("recipe.train")


def test_fit_budget_prefers_large_micro_batches_then_checkpointing():
    def plan(recipe):  # activations scale with the micro-batch; checkpointing keeps a quarter of them
        micro = levers.micro_batch_size(recipe)
        return {"predicted_train_peak_bytes": 1000 + micro * (25 if levers.gradient_checkpointing(recipe) else 100)}

    chosen, prediction = levers.fit_budget(_recipe(), plan, budget=1500)
    assert (chosen.train.micro_batch_size, chosen.train.gradient_checkpointing) == (4, False)
    assert prediction["predicted_train_peak_bytes"] == 1400
    chosen, _ = levers.fit_budget(_recipe(), plan, budget=1060)
    assert (chosen.train.micro_batch_size, chosen.train.gradient_checkpointing) == (2, True)
    with pytest.raises(PeftlabError, match=r"does not fit even at micro-batch 1 with gradient checkpointing "
                                           r"\(plan: 1\.00 KiB\)"):
        levers.fit_budget(_recipe(), plan, budget=1010)
    chosen, _ = levers.fit_budget(_recipe(gradient_checkpointing=True), plan, budget=1300)
    assert (chosen.train.micro_batch_size, chosen.train.gradient_checkpointing) == (8, True)  # explicit: kept


def test_auto_checkpointing_is_off_only_where_the_plan_without_it_fits():
    seen = []

    def plan(recipe):  # resident memory without checkpointing: 1000 bytes
        seen.append(levers.gradient_checkpointing(recipe))
        return {"predicted_train_peak_bytes": 600, "predicted_train_peak_rss_bytes": 1000}

    assert levers.automatic_checkpointing(_recipe())
    assert not levers.automatic_checkpointing(_recipe(gradient_checkpointing=True))  # explicit: never changed
    assert levers.choose_checkpointing(_recipe(), plan, available=2000) == {
        "gradient_checkpointing": False, "plan_without_bytes": 1000, "available_bytes": 2000, "share": 0.5}
    assert levers.choose_checkpointing(_recipe(), plan, available=1999)["gradient_checkpointing"] is True
    assert seen == [False, False]  # the plan asked is the one without checkpointing, at the recipe's micro-batch
    gpu = levers.choose_checkpointing(_recipe(), lambda r: {"predicted_train_peak_bytes": 600,
                                                             "predicted_train_peak_rss_bytes": None}, available=1300)
    assert gpu["plan_without_bytes"] == 600 and gpu["gradient_checkpointing"] is False  # GPU: live tensors


def test_auto_trimming_trims_every_step_only_where_memory_is_short():
    plan = {"predicted_train_peak_bytes": 600, "predicted_train_peak_rss_bytes": 1000}
    roomy = levers.choose_trimming(_recipe(), plan, available=2000, budget=None)
    assert roomy == {"trim_memory": False, "auto": "plan", "plan_rss_bytes": 1000, "available_bytes": 2000,
                     "share": 0.5}
    assert levers.choose_trimming(_recipe(), plan, available=1999, budget=None)["trim_memory"] is True
    assert levers.choose_trimming(_recipe(), plan, available=10**12, budget=2000) == {"trim_memory": True,
                                                                                      "auto": "--budget"}
    gpu = {"predicted_train_peak_bytes": 600, "predicted_train_peak_rss_bytes": None}
    assert levers.choose_trimming(_recipe(), gpu, available=1, budget=None)["trim_memory"] is False
    for explicit in (True, False, 8):  # as the recipe says, whatever the memory
        assert levers.choose_trimming(_recipe(trim_memory=explicit), plan, 1, None) == {"trim_memory": explicit}
    resolved = levers.with_trimming(_recipe(), roomy["trim_memory"])
    assert (levers.trim_period(resolved), levers.trim_period(_recipe())) == (None, 1)  # unresolved "auto": low RSS
    assert levers.settings(resolved)["trim_memory"] is False
    periodic = levers.with_trimming(_recipe(), 32)
    assert levers.trim_period(periodic) == 32 == levers.settings(periodic)["trim_memory"]
    assert levers.settings(levers.with_trimming(_recipe(), 1))["trim_memory"] is True  # 1 step: every step
    assert "every 32 steps and between phases" in levers.describe(levers.settings(periodic))
    assert "between phases only (auto: the plan's RSS, 1000 B, is within 50%" in levers.describe(
        levers.settings(resolved) | {"trimming": roomy})


# ------------------------------------------------------------------------------------------ allocator

def _no_user_allocator(monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("PEFTLAB_DISABLE", raising=False)
    for name in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(name)


def test_allocator_settings(monkeypatch):
    _no_user_allocator(monkeypatch)
    assert levers.allocator_settings() == {"allocator": "glibc", "malloc_trim": "between phases, after every "
                                           "evaluation batch and, per Train.trim_memory, every N optimizer steps"}
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert levers.allocator_settings() == {"allocator": "jemalloc (LD_PRELOAD)"}
    assert levers.release_freed_memory() is False  # another allocator: left alone
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setenv("PEFTLAB_DISABLE", "allocator")
    assert levers.release_freed_memory() is False


def test_release_freed_memory_returns_freed_heap_pages(monkeypatch):
    """Freed heap blocks pinned by the last one (conftest.pinned_freed_heap): resident until the pages are
    released."""
    _no_user_allocator(monkeypatch)
    pin = pinned_freed_heap()  # noqa: F841 (kept alive: it pins the freed blocks)
    held = current_rss()
    assert levers.release_freed_memory()
    assert held - current_rss() > 150 * 2**20


def test_onednn_cache_is_capped_under_a_budget_unless_the_user_sized_it(monkeypatch):
    monkeypatch.delenv(levers.ONEDNN_CACHE_ENV, raising=False)  # restored after the test, whatever the calls set
    monkeypatch.delenv("PEFTLAB_DISABLE", raising=False)
    default = {"onednn_primitive_cache": "oneDNN default (1024)"}
    assert levers.limit_onednn_cache(None) == default and levers.ONEDNN_CACHE_ENV not in os.environ  # the speed
    assert levers.limit_onednn_cache(2**30) == {"onednn_primitive_cache": str(levers.ONEDNN_CACHE_CAPACITY)}
    assert os.environ[levers.ONEDNN_CACHE_ENV] == str(levers.ONEDNN_CACHE_CAPACITY)  # where oneDNN reads it
    monkeypatch.setenv(levers.ONEDNN_CACHE_ENV, "64")  # the user's size is kept
    assert levers.limit_onednn_cache(2**30) == levers.limit_onednn_cache(None) == {"onednn_primitive_cache": "64"}
    monkeypatch.delenv(levers.ONEDNN_CACHE_ENV)
    monkeypatch.setenv("PEFTLAB_DISABLE", "onednn_cache")  # switched off for measuring: oneDNN's own default
    assert levers.limit_onednn_cache(2**30) == default and levers.ONEDNN_CACHE_ENV not in os.environ


# ------------------------------------------------------------------------------------ --budget, end to end

def test_run_under_a_budget_records_its_choice(tmp_path, tiny_bert, data_dir):
    recipe = write_recipe(tmp_path / "r.py", tiny_bert, train="epochs=1, batch_size=8, logging_steps=4")
    run_dir = run_recipe(tmp_path, recipe, data_dir, "--budget", "64GiB", "--set", "data.train_limit=32")
    env = json.loads((run_dir / "environment.json").read_text())["levers"]
    assert env["micro_batch_size"] == 8 and env["gradient_checkpointing"] is False and env["budget"] == 64 * 2**30
    assert env["trim_memory"] is True and env["trimming"] == {"trim_memory": True, "auto": "--budget"}
    assert env["allocator"]["allocator"] in ("glibc", "jemalloc (LD_PRELOAD)", "tcmalloc (LD_PRELOAD)")
    assert env["allocator"]["onednn_primitive_cache"] == os.environ[levers.ONEDNN_CACHE_ENV]  # what it ran with
    assert json.loads((run_dir / "recipe.json").read_text())["train"]["micro_batch_size"] == 8


def test_run_that_cannot_fit_stops_before_training(tmp_path, tiny_bert, data_dir, capsys):
    from peftlab import run as run_cli

    recipe = write_recipe(tmp_path / "r.py", tiny_bert)
    code = run_cli.main([str(recipe), "--data-dir", str(data_dir), "--runs-dir", str(tmp_path / "runs"),
                         "--reports-dir", str(tmp_path / "reports"), "--budget", "4KiB"])  # below even a tiny model's live plan
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "runs").exists()
    line = next(line for line in err.splitlines() if line.startswith("error:"))
    assert "does not fit even at micro-batch 1 with gradient checkpointing (plan: " in line
    assert line.strip().endswith("(data.max_length)")


def test_comparison_shows_a_variant_that_cannot_fit(tmp_path, tiny_bert, data_dir, monkeypatch):
    from peftlab import comparison_report
    from peftlab.comparison import Comparison, Variant, run_variant

    monkeypatch.setenv("PEFTLAB_DATA_DIR", str(data_dir))
    recipe = write_recipe(tmp_path / "lora.py", tiny_bert, name="lora")
    result = run_variant(Variant(recipe, "lora", 0), Comparison("cmp", ["lora.py"], baseline="lora"), tmp_path,
                         tmp_path / "reports", budget=4096)
    assert result["state"] == "does not fit" and result["run"] is None
    assert result["error"].startswith("does not fit (plan: ") and result["error"].endswith("B)")
    row = {"name": "lora", "runs": [], "errors": [result["error"]]}
    assert comparison_report._row_cells(row, "accuracy", [], None, ())[:3] == ["lora", result["error"], ""]

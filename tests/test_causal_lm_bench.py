"""The causal-LM throughput bench on the tiny Llama: its padding-free batches keep examples apart, its batch log
counts examples and tokens as trained, and a bounded bench writes its report."""

from __future__ import annotations

import pytest
import torch

from peftlab import causal_lm_bench, load_recipe, measure, rundir
from peftlab.building import prepare_inputs

from test_causal_lm import make_chat_tokenizer, make_llama, sums, write_jsonl, write_recipe


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def sums_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_jsonl(root / "sums" / "train.jsonl", sums(160, seed=1))
    write_jsonl(root / "sums" / "test.jsonl", sums(8, seed=2))
    return root


def test_padding_free_batches_give_the_padded_batches_loss(tmp_path, llama, sums_dir):
    from transformers import AutoModelForCausalLM

    recipe = load_recipe(write_recipe(tmp_path / "r.py", llama))
    inputs = prepare_inputs(recipe, sums_dir)
    features = [{k: inputs.train[i][k] for k in ("input_ids", "labels")} for i in range(4)]
    model = AutoModelForCausalLM.from_pretrained(llama).eval()
    padded = inputs.task.collator(make_chat_tokenizer())(features)
    flat = causal_lm_bench.flattening_collator()(features)
    assert flat["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in features))
    with torch.no_grad():
        # each example attends to itself only: the same loss over the same response tokens
        assert model(**flat).loss == pytest.approx(model(**padded).loss.item(), rel=1e-5)


def test_batch_log_splits_packed_rows_into_their_examples():
    log = causal_lm_bench.BatchLog(lambda features: "collated")
    assert log([{"input_ids": [1, 2, 3, 4, 5], "labels": [-100, 2, -100, -100, 5], "position_ids": [0, 1, 0, 1, 2]},
                {"input_ids": [1, 2], "labels": [-100, 2]}]) == "collated"
    assert log.batches == [{"lengths": [2, 3, 2], "tokens": 7, "labelled": 3}]


def test_a_bounded_bench_writes_its_report(tmp_path, llama, sums_dir):
    recipe_path = write_recipe(tmp_path / "r.py", llama)
    settings = causal_lm_bench.Settings(steps=1, warmup=1, rounds=2, prompts=4, max_new_tokens=6, batch_sizes=(1, 4),
                                        peak_seconds=0.2, variants=("recipe", "packing", "padding_free", "no_bf16"))
    record = causal_lm_bench.bench(recipe_path, settings, str(sums_dir), tmp_path / "out", "bench r.py")
    training = record["training"]
    assert set(training) == {"recipe", "packing", "padding_free", "no_bf16"}
    for name, result in training.items():
        assert len(result["rounds"]) == 2, name
        for run in result["rounds"]:
            assert "error" not in run and run["steps"] == 1 and run["tokens"] > 0, name
            assert 0 < run["mfu"] and run["model_flops"] > 0
            # the measured step is one the profiler did not watch, after the warm-up step
            measured = [i for i in range(1, len(run["step_seconds"])) if i not in run["profiled_steps"]]
            assert len(measured) == 1 and measured[0] == len(run["step_seconds"]) - 1
    recipe_rounds = training["recipe"]["rounds"]
    assert recipe_rounds[0]["tokens"] == recipe_rounds[1]["tokens"]  # the same batches each round
    assert training["recipe"]["vs_recipe"] == 1.0 and training["recipe"]["vs_recipe_range"] == [1.0, 1.0]
    ratios = [r["tokens_per_second"] / b["tokens_per_second"] for r, b in zip(training["packing"]["rounds"],
                                                                               recipe_rounds)]
    assert training["packing"]["vs_recipe_range"] == [min(ratios), max(ratios)]
    # "auto" levers resolved as a run resolves them: a tiny model fits without checkpointing or per-step trimming
    assert recipe_rounds[0]["levers"]["gradient_checkpointing"] is False
    assert recipe_rounds[0]["levers"]["trim_memory"] is False
    assert training["recipe"]["train_rss_bytes"] == max(r["train_rss_bytes"] for r in recipe_rounds) > 0
    packed = training["packing"]["rounds"][0]
    assert training["no_bf16"]["precision"] == "fp32" and packed["speed"]["packing"]
    # packed rows hold several examples each: fewer rows than examples per step
    assert packed["examples"] > 8 == recipe_rounds[0]["examples"]
    generation = record["generation"]
    assert [(r["batch_size"], r["decoder"], r["adapter_merged"]) for r in generation["runs"]] == \
        [(size, decoder, merged) for size in (1, 4)
         for decoder, merged in (("pruned", True), ("generate", True), ("unmerged", False))]
    assert generation["prompts"] == 4
    assert all(r["same_texts_as_first"] and r["new_tokens"] > 0 for r in generation["runs"])
    text = (tmp_path / "out" / "bench_causal_lm.md").read_text()
    assert rundir.read_json(tmp_path / "out" / "bench_causal_lm.json")["training"] == training
    assert f"{training['recipe']['tokens_per_second']:.1f}" in text and "| 4 | kept (transformers' generate) | merged |" in text
    assert "Noise: the recipe's own 2 rounds differ by" in text
    assert measure.human_bytes(training["recipe"]["train_rss_bytes"]) in text


def test_training_rounds_alternate_and_compile_runs_once_at_the_end():
    order = causal_lm_bench.training_order(("recipe", "compile", "packing", "no_bf16"), rounds=3)
    assert order == [(0, "recipe"), (0, "packing"), (0, "no_bf16"), (1, "no_bf16"), (1, "packing"), (1, "recipe"),
                     (2, "recipe"), (2, "packing"), (2, "no_bf16"), (0, "compile")]

"""Memory prediction: built on the meta device from the recipe, counts as the real model, verdict on a budget."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from peftlab import LoRA, PromptTuning, Quant4bit, load_recipe
from peftlab import run as run_cli
from peftlab.building import build_model, prepare_inputs
from peftlab.measure import count_parameters
from peftlab.plan import parse_size, predict
from peftlab.recipe import validate

from conftest import make_bert, write_recipe


@pytest.fixture(scope="module")
def bert64(tmp_path_factory):
    return make_bert(tmp_path_factory.mktemp("plan-bert"), hidden=64)


def _prediction(tmp_path, model_dir, data_dir, **changes):
    recipe = dataclasses.replace(load_recipe(write_recipe(tmp_path / "r.py", model_dir)), **changes)
    validate(recipe)
    inputs = prepare_inputs(recipe, data_dir)
    return recipe, inputs, predict(recipe, inputs.task, inputs.resolved, inputs.labels, max(inputs.train["length"]))


def test_meta_counts_equal_the_real_model(tmp_path, bert64, data_dir):
    for method in (LoRA(r=4, target="all-linear"), PromptTuning(num_virtual_tokens=5)):
        recipe, inputs, plan = _prediction(tmp_path, bert64, data_dir, method=method)
        real = count_parameters(build_model(recipe, inputs.task, inputs.resolved, inputs.labels))
        assert (plan["trainable_params"], plan["total_params"]) == (real["trainable_params"], real["total_params"])


def test_parts_follow_the_recipe(tmp_path, bert64, data_dir):
    recipe, _, lora = _prediction(tmp_path, bert64, data_dir, method=LoRA(r=4))
    _, _, qlora = _prediction(tmp_path, bert64, data_dir, method=LoRA(r=4), quant=Quant4bit())
    _, _, wide = _prediction(tmp_path, bert64, data_dir, method=LoRA(r=4),
                             train=dataclasses.replace(recipe.train, batch_size=4 * recipe.train.batch_size))
    assert qlora["parts"]["weights"] < 0.5 * lora["parts"]["weights"]  # 4-bit linear layers
    assert qlora["parts"]["optimizer"] == lora["parts"]["optimizer"] > 2 * lora["parts"]["gradients"]  # + step counts
    assert qlora["parts"]["dequantized weight"] > 0 == lora["parts"]["dequantized weight"]

    def activations(plan):
        return sum(v for k, v in plan["parts"].items() if k.startswith("activations"))

    assert 3 * activations(lora) < activations(wide) <= 4 * activations(lora)  # per row, plus per-layer weight copies
    parts = lora["parts"]
    assert lora["predicted_train_peak_bytes"] == parts["weights"] + parts["optimizer"] + max(
        parts["transient"], parts["gradients"])


def test_plan_flag_prints_and_exits_without_a_run(tmp_path, tiny_bert, data_dir, capsys):
    recipe = write_recipe(tmp_path / "r.py", tiny_bert)
    args = [str(recipe), "--data-dir", str(data_dir), "--runs-dir", str(tmp_path / "runs"), "--plan"]
    assert run_cli.main(args + ["--budget", "64GiB"]) == 0
    out = capsys.readouterr().out
    assert "predicted training peak (cpu, live tensors)" in out and "fits:" in out
    assert run_cli.main(args + ["--budget", "1KiB"]) == 1  # the live-tensor plan of a tiny model is under 1 MiB
    assert "does not fit" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()


def test_parse_size():
    assert parse_size("16GiB") == 16 * 2**30 and parse_size("512MiB") == 512 * 2**20 and parse_size("8GB") == 8 * 2**30
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("lots")

"""Recipe loading: every bad recipe fails with one line that names the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftlab import LoRA, load_recipe
from peftlab.errors import PeftlabError
from peftlab.recipe import apply_overrides, recipe_from_dict, recipe_to_dict

from conftest import write_recipe

REPO = Path(__file__).resolve().parent.parent


def _error(path: Path, overrides=()) -> str:
    with pytest.raises(PeftlabError) as info:
        load_recipe(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


def test_shipped_recipes_load():
    recipe = load_recipe(REPO / "recipes" / "lora_sst2.py")
    assert recipe.name == "lora_sst2" and isinstance(recipe.method, LoRA) and recipe.method.target == "all-linear"
    assert recipe.data.name == "glue/sst2" and recipe.model.name == "sentence-transformers/all-MiniLM-L6-v2"
    full = load_recipe(REPO / "recipes" / "full_sst2.py")
    assert full.method.kind == "full" and full.data == recipe.data  # derived from the same base


@pytest.mark.parametrize("method, expected", [
    ("LoRA(rr=4)", "unknown field 'rr' in LoRA (did you mean 'r'?)"),
    ("LoRA(r=0)", "method.r=0: the rank must be >= 1"),
    ("LoRA(r=4.5)", "method.r=4.5: expected int"),
    ("LoRA(dropout=1.5)", "method.dropout=1.5"),
    ("LoRA(target=[])", "method.target"),
    ("'lora'", "method: str is not a method"),
])
def test_bad_method_fields(tmp_path, tiny_bert, method, expected):
    assert expected in _error(write_recipe(tmp_path / "r.py", tiny_bert, method=method))


@pytest.mark.parametrize("train, expected", [
    ("lr=0", "train.lr=0: the learning rate must be in (0, 1)"),
    ("lr=-1e-4", "train.lr=-0.0001"),
    ("epochs=0", "train.epochs=0"),
    ("batch_size=0", "train.batch_size=0"),
    ("batch_size='32'", "train.batch_size='32': expected int"),
    ("warmup_ratio=1.5", "train.warmup_ratio=1.5"),
    ("scheduler='cyclic'", "train.scheduler='cyclic': expected one of 'linear'"),
    ("epoch=3", "unknown field 'epoch' in Train (did you mean 'epochs'?)"),
])
def test_bad_train_fields(tmp_path, tiny_bert, train, expected):
    assert expected in _error(write_recipe(tmp_path / "r.py", tiny_bert, train=train))


def test_unknown_task_and_bad_name(tmp_path, tiny_bert):
    path = write_recipe(tmp_path / "r.py", tiny_bert)
    path.write_text(path.read_text().replace('task="classification"', 'task="translation"'))
    assert "model.task='translation': expected one of 'classification'" in _error(path)
    path = write_recipe(tmp_path / "r.py", tiny_bert, name="my run/1")
    assert "recipe.name='my run/1'" in _error(path)


def test_syntax_error_and_missing_recipe(tmp_path, tiny_bert):
    path = tmp_path / "r.py"
    path.write_text("recipe = Recipe(\n")
    assert "syntax error" in _error(path) and "r.py:" in _error(path)
    path.write_text("x = 1\n")
    assert "define a top-level `recipe = Recipe(...)`" in _error(path)
    assert "recipe file" in _error(tmp_path / "missing.py")


def test_overrides_are_typed(tmp_path, tiny_bert):
    path = write_recipe(tmp_path / "r.py", tiny_bert)
    recipe = load_recipe(path, ["train.epochs=2", "method.r=16", "method.target=query,key", "data.train_limit=none"])
    assert recipe.train.epochs == 2.0 and recipe.method.r == 16 and recipe.method.target == ["query", "key"]
    assert recipe.data.train_limit is None
    assert load_recipe(path, ["method.target=all-linear"]).method.target == "all-linear"
    # a list as a recipe writes it reads as that list, not as one name with brackets and quotes
    assert load_recipe(path, ['method.modules_to_save=["LayerNorm"]']).method.modules_to_save == ["LayerNorm"]
    assert load_recipe(path, ["method.target=['query', 'key']"]).method.target == ["query", "key"]
    assert load_recipe(path, ['method.target=["query"]']).method.target == ["query"]  # str | list: one name
    assert "expected int" in _error(path, ["method.r=big"])
    assert "Train has no field 'epoch' (did you mean 'epochs'?)" in _error(path, ["train.epoch=2"])
    assert "use the form section.field=value" in _error(path, ["train.epochs"])
    assert "method.r=0" in _error(path, ["method.r=0"])  # overrides are validated like the file
    assert "expected true or false" in _error(path, ["method.rslora=maybe"])
    # a field of several types names them all: bool | int | Literal["auto"]
    assert "train.trim_memory=sometimes: expected true or false, or int, or one of auto" in _error(
        path, ["train.trim_memory=sometimes"])


def test_round_trip_through_json(tmp_path, tiny_bert):
    recipe = load_recipe(write_recipe(tmp_path / "r.py", tiny_bert), ["method.rslora=true"])
    assert recipe_from_dict(recipe_to_dict(recipe)) == recipe
    assert apply_overrides(recipe, []) == recipe

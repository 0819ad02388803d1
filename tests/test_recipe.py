"""Recipe loading, overrides and validation."""

from pathlib import Path

import pytest

from trainwright.components import check_recipe
from trainwright.errors import UserError
from trainwright.recipe import apply_overrides, load_recipe, parse_override

RECIPES = sorted(Path(__file__).resolve().parent.parent.glob("recipes/*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    check_recipe(recipe)
    assert recipe.name == path.stem


def test_override_values_are_parsed_as_yaml():
    assert parse_override("trainer.epochs=3") == (["trainer", "epochs"], 3)
    assert parse_override("model.hidden=[8, 4]") == (["model", "hidden"], [8, 4])
    assert parse_override("logging.wandb=false") == (["logging", "wandb"], False)
    assert parse_override("name=abc") == (["name"], "abc")


def test_overrides_change_the_recipe(tmp_path):
    recipe = load_recipe(RECIPES[0].parent / "heart.yaml", ["trainer.epochs=7", "optimizer.momentum=0.5"])
    assert recipe.trainer.epochs == 7
    assert recipe.optimizer.kwargs()["momentum"] == 0.5


def test_override_into_a_value_is_refused():
    with pytest.raises(UserError, match="'seed' is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(UserError, match=r"trainer\.epocs: unknown key; did you mean 'epochs'\?"):
        load_recipe(RECIPES[0].parent / "heart.yaml", ["trainer.epocs=3"])


def test_bad_type_names_the_key_path_and_the_file():
    with pytest.raises(UserError) as info:
        load_recipe(RECIPES[0].parent / "heart.yaml", ["trainer.epochs=many"])
    assert "heart.yaml" in str(info.value) and "trainer.epochs" in str(info.value)


def test_out_of_range_value_is_refused():
    with pytest.raises(UserError, match=r"optimizer\.lr"):
        load_recipe(RECIPES[0].parent / "heart.yaml", ["optimizer.lr=-1"])


def test_unknown_component_argument_suggests_the_right_one():
    recipe = load_recipe(RECIPES[0].parent / "heart.yaml", ["model.hiden=[4]"])
    with pytest.raises(UserError, match=r"model\.hiden: unknown argument for model 'mlp'; did you mean 'hidden'\?"):
        check_recipe(recipe)


def test_unknown_component_name_suggests_the_right_one():
    recipe = load_recipe(RECIPES[0].parent / "heart.yaml", ["optimizer.name=adamm"])
    with pytest.raises(UserError, match="did you mean 'adam'"):
        check_recipe(recipe)

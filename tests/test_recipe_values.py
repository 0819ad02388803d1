"""Recipe values are read as written: YAML exponent numbers are numbers everywhere, ints are strict,
component arguments are checked against the builder's annotations, and null removes an argument."""

from __future__ import annotations

import pytest
import yaml

from reliability_helpers import HEART, TINY, call, train_ok, user_error


def test_exponent_numbers_are_numbers_in_recipe_files_and_overrides(capsys, tmp_path):
    recipe = tmp_path / "heart.yaml"
    recipe.write_text(HEART.read_text().replace("momentum: 0.9", "momentum: 0.9\n  weight_decay: 5e-4"))
    out, _ = train_ok(capsys, recipe, *TINY, "scheduler.name=cosine", "scheduler.min_lr=1e-5", "--run-dir",
                      tmp_path / "run")
    assert "Run complete" in out
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert saved["optimizer"]["weight_decay"] == 5e-4 and saved["scheduler"]["min_lr"] == 1e-5


@pytest.mark.parametrize(
    ("override", "fragments"),
    [("trainer.epochs=true", ("trainer.epochs", "valid integer")),
     ("data.batch_size=64.0", ("data.batch_size", "valid integer", "64.0")),
     ("optimizer.weight_decay='5e-4'", ("optimizer.weight_decay", "valid number", "'5e-4'")),
     ("optimizer.nesterov=1", ("optimizer.nesterov", "valid boolean")),
     ("model.hidden=[8, 4.5]", ("model.hidden", "item [1]", "list[int]")),
     ("data.seed=abc", ("data.seed", "valid integer", "'abc'"))],
)
def test_values_of_the_wrong_type_are_refused_by_check(capsys, override, fragments):
    user_error(capsys, "check", HEART, override, fragments=fragments)


def test_null_removes_a_component_argument(capsys):
    code, out, err = call(capsys, "check", HEART, "optimizer.momentum=null")
    assert code == 0, err
    assert "momentum" not in yaml.safe_load(out)["optimizer"]


def test_a_scheduled_run_raises_no_scheduler_order_warning(capsys, tmp_path, recwarn):
    """The loop may step the torch optimizer directly; the scheduler must still see that step (torch warns
    'lr_scheduler.step() before optimizer.step()' and the user would think a step was skipped)."""
    train_ok(capsys, HEART, *TINY, "scheduler.name=step", "scheduler.step_size=2", "--run-dir", tmp_path / "run")
    assert not [str(w.message) for w in recwarn if "lr_scheduler" in str(w.message)]

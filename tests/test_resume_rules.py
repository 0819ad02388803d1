"""Which changes a resumed run refuses: a schedule laid out over the run's length cannot follow a new length."""

from __future__ import annotations

import pytest

from conftest import RECIPES, assert_ok, assert_resumed, assert_user_error, run_cli

HEART = RECIPES / "heart.yaml"
TINY = ["data.num_points=1000", "logging.wandb=false"]


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_extending_a_run_with_a_schedule_over_its_length_is_refused(tmp_path, name):
    run_dir = tmp_path / "run"
    assert_ok(run_cli("train", HEART, *TINY, f"scheduler.name={name}", "trainer.max_steps=10", "--run-dir", run_dir))
    recipe_before = (run_dir / "recipe.yaml").read_text()
    result = run_cli("train", HEART, *TINY, f"scheduler.name={name}", "trainer.max_steps=20", "--run-dir", run_dir)
    assert_user_error(result.returncode, result.stderr, f"scheduler '{name}' laid out over 10 steps", "now make 20",
                      "--restart")
    assert (run_dir / "recipe.yaml").read_text() == recipe_before


@pytest.mark.parametrize("step", [
    ["scheduler.name=step", "scheduler.step_size=5"],
    ["scheduler.name=constant", "scheduler.warmup_steps=3"],
    ["scheduler.name=ExponentialLR", "scheduler.gamma=0.9", "scheduler.warmup_steps=3"],
], ids=["step", "constant", "ExponentialLR"])
def test_extending_a_run_with_a_schedule_of_no_length_goes_on(tmp_path, step):
    run_dir = tmp_path / "run"
    assert_ok(run_cli("train", HEART, *TINY, *step, "trainer.max_steps=10", "--run-dir", run_dir))
    result = assert_ok(run_cli("train", HEART, *TINY, *step, "trainer.max_steps=20", "--run-dir", run_dir))
    assert_resumed(result.stdout + result.stderr, 10)
    assert "Run complete at step 20" in result.stdout

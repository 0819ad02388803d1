"""Which changes a resumed run refuses: a schedule laid out over the run's length cannot follow a new length."""

from __future__ import annotations

from conftest import RECIPES, assert_ok, assert_resumed, assert_user_error, run_cli

HEART = RECIPES / "heart.yaml"
TINY = ["data.num_points=1000", "logging.wandb=false"]


def test_extending_a_cosine_scheduled_run_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    assert_ok(run_cli("train", HEART, *TINY, "scheduler.name=cosine", "trainer.max_steps=10", "--run-dir", run_dir))
    recipe_before = (run_dir / "recipe.yaml").read_text()
    result = run_cli("train", HEART, *TINY, "scheduler.name=cosine", "trainer.max_steps=20", "--run-dir", run_dir)
    assert_user_error(result.returncode, result.stderr, "scheduler 'cosine' laid out over 10 steps", "now make 20",
                      "--restart")
    assert (run_dir / "recipe.yaml").read_text() == recipe_before


def test_extending_a_run_with_a_step_schedule_goes_on(tmp_path):
    run_dir = tmp_path / "run"
    step = ["scheduler.name=step", "scheduler.step_size=5"]
    assert_ok(run_cli("train", HEART, *TINY, *step, "trainer.max_steps=10", "--run-dir", run_dir))
    result = assert_ok(run_cli("train", HEART, *TINY, *step, "trainer.max_steps=20", "--run-dir", run_dir))
    assert_resumed(result.stdout + result.stderr, 10)
    assert "Run complete at step 20" in result.stdout

"""The step is a component (`step.name`): a step of the user's own by import path (tests/denoising_step.py,
which imports only trainwright's public Step protocol) trains, is SIGKILLed once a chosen checkpoint is on
disk, resumes from it to the same final weights bit for bit, and evaluates; a step that is not a Step, or
a misspelt one, is one message from `check`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import resuming
from conftest import RECIPES, assert_ok, assert_user_error, cli_env_with_tests, run_cli
from denoising_step import Denoise
from trainwright.finished.inference import load_run

# linear: 40 training points in batches of 8 -> 5 steps per epoch; 30 steps, a checkpoint every 10.
DENOISE = [
    "data.batch_size=8", "trainer.epochs=6", "trainer.log_every_steps=5", "trainer.eval_every_epochs=2",
    "checkpoint.every_steps=10", "checkpoint.every_epochs=null", "checkpoint.keep_last=5", "logging.wandb=false",
    "model={name: mlp, in_features: 1, hidden: [16], out_features: 1}", "loss.name=mse", "scheduler.name=none",
    "optimizer={name: adamw, lr: 0.01}", "step={name: denoising_step:Denoise, noise: 0.2}",
]


def train_args(run_dir: Path) -> list[object]:
    return ["train", RECIPES / "linear_regression.yaml", *DENOISE, "--run-dir", run_dir]


def test_a_user_step_by_import_path_trains_resumes_bitwise_and_evaluates(tmp_path):
    reference = assert_ok(run_cli(*train_args(tmp_path / "reference"), env=cli_env_with_tests()))
    assert "Run complete at step 30" in reference.stdout
    resuming.kill_and_resume(20, train_args(tmp_path / "run"), tmp_path / "run", env=cli_env_with_tests())
    resuming.assert_same_weights(tmp_path / "run", tmp_path / "reference")
    evaluated = assert_ok(run_cli("eval", tmp_path / "run", env=cli_env_with_tests()))
    metrics = json.loads(evaluated.stdout)
    assert set(metrics) == {"val/loss", "val/mae"} and all(math.isfinite(v) for v in metrics.values()), metrics
    run = load_run(tmp_path / "run")  # the run's own step scores its evaluation: noisy inputs against clean ones
    assert isinstance(run.scoring.step, Denoise) and run.scoring.step.noise == 0.2


@pytest.mark.parametrize(("step", "fragments"), [
    ("defualt", ("step.name", "'defualt'", "did you mean 'default'")),
    ("ragged_items:TokenNet", ("step.name", "not a subclass of trainwright.step.Step")),
    ("{name: denoising_step:Denoise, nois: 0.1}", ("step.nois", "did you mean 'noise'")),
])
def test_a_step_that_cannot_be_built_is_one_message_from_check(step, fragments):
    override = f"step={step}" if "{" in step else f"step.name={step}"
    result = run_cli("check", RECIPES / "linear_regression.yaml", override, env=cli_env_with_tests())
    assert_user_error(result.returncode, result.stderr, *fragments)

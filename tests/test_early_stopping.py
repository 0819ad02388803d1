"""trainer.early_stopping: the rule itself, its monitor checked at start-up, and a real heart run that stops
before its last epoch, at the same epoch and with bitwise-equal weights when it was SIGKILLed while counting
its patience, and is then already complete."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

import processes
import resuming
from conftest import HEART_SMALL, REPO, checkpoint_dir, cli_env, describe, run_cli
from reliability_helpers import HEART, user_error
from trainwright.checkpoint.format import TrainState
from trainwright.recipe import EarlyStoppingConfig
from trainwright.training.early_stopping import improves, observe

# 640 training points / 64 = 10 steps per epoch. min_delta=0.5 is more than any later epoch improves heart's
# validation loss by, so epoch 1 stays the best: patience 2 stops the run after epoch 3 of 6. The killed run is
# killed at step 24 (its checkpoint every 4 steps): in epoch 3, counting its patience.
PLATEAU = [
    HEART_SMALL, "trainer.epochs=6", "logging.wandb=false", "checkpoint.every_steps=4",
    "checkpoint.keep_last=3", "trainer.early_stopping.patience=2", "trainer.early_stopping.min_delta=0.5",
]
STEPS_PER_EPOCH = 10
STOP_EPOCH = 3
KILL_STEP = 24
CPU_2PROC = REPO / "accelerate_configs" / "cpu_2proc.yaml"


# --- the rule ----------------------------------------------------------------------------------------


def config(**values) -> EarlyStoppingConfig:
    return EarlyStoppingConfig(**{"patience": 2, **values})


def test_an_improvement_beats_the_best_by_more_than_min_delta_in_the_mode_s_direction():
    assert improves(5.0, None, config())
    assert not improves(math.nan, None, config())
    assert improves(0.9, 1.0, config()) and not improves(1.0, 1.0, config())
    assert not improves(0.95, 1.0, config(min_delta=0.1)) and improves(0.85, 1.0, config(min_delta=0.1))
    assert improves(0.8, 0.7, config(mode="max")) and not improves(0.6, 0.7, config(mode="max"))
    assert not improves(math.nan, 1.0, config()) and not improves(math.nan, 1.0, config(mode="max"))


def test_patience_counts_validations_without_improvement_and_an_improvement_resets_it():
    rule, state = config(monitor="val/accuracy", mode="max"), TrainState()
    stops = []
    for epoch, accuracy in enumerate([0.5, 0.6, 0.6, 0.7, 0.65, 0.7], start=1):
        state.epoch, state.val_metrics = epoch, {"val/accuracy": accuracy}
        stops.append(observe(rule, state, more_to_train=True))
    assert stops == [False, False, False, False, False, True]
    assert (state.early_best, state.early_best_epoch, state.early_waited, state.stopped_early_epoch) == (0.7, 4, 2, 6)


def test_the_last_validation_of_the_run_does_not_count_as_stopping_early():
    state = TrainState(early_best=1.0, early_best_epoch=1, early_waited=1, epoch=3, val_metrics={"val/loss": 2.0})
    assert not observe(config(), state, more_to_train=False)
    assert state.stopped_early_epoch == 0 and state.early_waited == 2


# --- the recipe --------------------------------------------------------------------------------------


def test_a_misspelt_early_stopping_monitor_is_refused(capsys):
    user_error(
        capsys,
        "check",
        HEART,
        "trainer.early_stopping.patience=2",
        "trainer.early_stopping.monitor=val/acuracy",
        fragments=("trainer.early_stopping.monitor", "did you mean 'val/accuracy'"),
    )


def test_patience_is_required_and_positive(capsys):
    user_error(capsys, "check", HEART, "trainer.early_stopping.mode=max", "trainer.early_stopping.monitor=val/accuracy",
               fragments=("trainer.early_stopping.patience: required key is missing",))
    user_error(
        capsys, "check", HEART, "trainer.early_stopping.patience=0", fragments=("trainer.early_stopping.patience",)
    )


# --- a real run ---------------------------------------------------------------------------------------


def command(run_dir: Path) -> list[object]:
    return [sys.executable, "-m", "trainwright", "train", HEART, *PLATEAU, "--run-dir", run_dir]


def train(run_dir: Path):
    result = run_cli("train", HEART, *PLATEAU, "--run-dir", run_dir)
    assert result.returncode == 0 and "Traceback" not in result.stderr, describe(result)
    return result


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = train(run_dir)
    assert f"Stopped early after epoch {STOP_EPOCH}: val/loss did not improve on its best" in result.stdout
    return run_dir


def test_an_early_stopped_run_says_why_and_is_then_already_complete(reference):
    stopped = summary(reference)
    assert stopped["status"] == "completed"
    assert (stopped["epoch"], stopped["step"]) == (STOP_EPOCH, STOP_EPOCH * STEPS_PER_EPOCH)  # before epoch 6
    assert {
        k: stopped["stopped_early"][k] for k in ("epoch", "monitor", "mode", "best_epoch", "patience", "min_delta")
    } == {
        "epoch": STOP_EPOCH,
        "monitor": "val/loss",
        "mode": "min",
        "best_epoch": 1,
        "patience": 2,
        "min_delta": 0.5,
    }
    again = train(reference)
    assert f"Run was already complete at step {STOP_EPOCH * STEPS_PER_EPOCH}" in again.stdout, describe(again)
    assert f"Stopped early after epoch {STOP_EPOCH}" in again.stdout
    assert summary(reference) == stopped


def test_sigkilled_while_counting_patience_stops_at_the_same_epoch_bitwise(reference, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", HEART, *PLATEAU, "--run-dir", run_dir]
    resuming.kill_at(KILL_STEP, args, run_dir)
    assert json.loads((checkpoint_dir(run_dir, KILL_STEP) / "trainer.json").read_text())["early_waited"] == 1
    resuming.resume(KILL_STEP, args)
    assert summary(run_dir)["stopped_early"] == summary(reference)["stopped_early"]
    resuming.assert_same_weights(run_dir, reference)


def test_cv_folds_stop_early_and_count_as_completed(tmp_path):
    folder = tmp_path / "cv"
    args = ["cv", HEART, "--folds", "2", "data.num_points=2000", "trainer.epochs=5", "logging.wandb=false",
            "trainer.early_stopping.patience=1", "trainer.early_stopping.min_delta=0.5", "--run-dir", folder]
    result = run_cli(*args)
    assert result.returncode == 0, describe(result)
    folds = [summary(folder / f"fold_{k}") for k in (1, 2)]
    assert [(fold["status"], fold["epoch"], fold["stopped_early"]["epoch"]) for fold in folds] == [
        ("completed", 2, 2)
    ] * 2
    assert json.loads((folder / "cv_summary.json").read_text())["folds"]["fold_1"]["val/loss"] == folds[0]["val/loss"]
    weights = (folder / "fold_1" / "model.safetensors").stat().st_mtime_ns
    again = run_cli(*args)
    assert again.returncode == 0 and "Resuming" not in again.stdout + again.stderr, describe(again)
    assert (folder / "fold_1" / "model.safetensors").stat().st_mtime_ns == weights  # not trained again


def test_two_processes_stop_at_the_same_epoch(reference, tmp_path):
    """Every process sees the same validation metrics (reduced over processes), so they stop together, at the
    epoch one process stops at."""
    run_dir = tmp_path / "run"
    result = processes.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", CPU_2PROC,
                            "--main_process_port", processes.free_port(), *command(run_dir)[1:]], cli_env())
    assert result.returncode == 0, describe(result)
    assert "world_size=2 device=cpu" in result.stdout
    two, one = summary(run_dir)["stopped_early"], summary(reference)["stopped_early"]
    assert (two["epoch"], two["best_epoch"]) == (one["epoch"], one["best_epoch"]) == (STOP_EPOCH, 1)
    assert two["best"] == pytest.approx(one["best"], rel=1e-4)

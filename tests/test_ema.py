"""trainer.ema: the average itself, a heart run killed mid-epoch that resumes bitwise (averaged and raw
weights, on one process and on two), `eval` on the averaged weights by default and on the raw ones when
asked, and fsdp refused with one message."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import processes
from conftest import REPO, checkpoint_steps, cli_env, describe, newest_valid_checkpoint, run_cli
from reliability_helpers import HEART, TINY, user_error
from trainwright.ema import WeightAverage
from trainwright.recipe import EmaConfig

CPU_2PROC = REPO / "accelerate_configs" / "cpu_2proc.yaml"
# 25600 training points / 64 = 400 steps per epoch, 2 epochs, a checkpoint every 50 steps.
SMALL = ["data.num_points=32000", "trainer.epochs=2", "logging.wandb=false", "checkpoint.every_steps=50",
         "checkpoint.keep_last=3", "trainer.ema.decay=0.99", "trainer.ema.start_step=30", "trainer.ema.every_steps=2"]
TOTAL_STEPS = 800


# --- the average --------------------------------------------------------------------------------------


def test_the_average_copies_up_to_start_step_then_moves_by_one_minus_decay_every_n_steps():
    model = nn.Linear(1, 1, bias=False)
    average = WeightAverage(model, EmaConfig(decay=0.75, start_step=2, every_steps=2))
    for step, weight in ((1, 5.0), (2, 4.0), (3, 100.0), (4, 8.0), (6, 0.0)):
        with torch.no_grad():
            model.weight.fill_(weight)
        average.update(step)
    # step 1: not an update step; 2: copied (4); 3: skipped; 4: 4 + 0.25 * (8 - 4) = 5; 6: 5 + 0.25 * (0 - 5)
    assert average.tensors()["weight"].item() == 3.75
    with average.swapped_in():
        assert model.weight.item() == 3.75
    assert model.weight.item() == 0.0  # the raw weight is back


# --- a real run ---------------------------------------------------------------------------------------


def command(run_dir: Path, processes_: int) -> list[object]:
    args = ["-m", "trainwright", "train", HEART, *SMALL, "--run-dir", run_dir]
    if processes_ == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", CPU_2PROC,
            "--main_process_port", processes.free_port(), *args]


def train(run_dir: Path, processes_: int = 1):
    result = processes.run(command(run_dir, processes_), cli_env())
    assert result.returncode == 0 and "Traceback" not in result.stderr, describe(result)
    assert f"world_size={processes_} device=cpu" in result.stdout
    return result


def files(run_dir: Path) -> tuple[bytes, bytes]:
    return (run_dir / "model.safetensors").read_bytes(), (run_dir / "model_raw.safetensors").read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    train(run_dir)
    return run_dir


@pytest.mark.parametrize("processes_", [1, 2])
def test_killed_mid_epoch_resumes_bitwise_averaged_and_raw(processes_, reference, start, tmp_path, tmp_path_factory):
    expected = reference if processes_ == 1 else tmp_path_factory.mktemp("reference2") / "run"
    if processes_ == 2:
        train(expected, 2)
    run_dir = tmp_path / "run"
    killed = start(command(run_dir, processes_), cli_env(), name="killed")
    killed.wait_for("a checkpoint inside the first epoch", lambda: (newest_valid_checkpoint(run_dir) or 0) >= 100)
    killed.kill()  # the whole process tree
    killed_at = newest_valid_checkpoint(run_dir)
    assert killed_at < TOTAL_STEPS and killed_at % 400, killed.describe()
    assert (run_dir / "checkpoints" / f"step_{killed_at:08d}" / "ema.safetensors").is_file()

    result = train(run_dir, processes_)
    assert f"Resuming from step {killed_at} " in result.stdout, describe(result)
    averaged, raw = files(run_dir)
    assert (averaged, raw) == files(expected)
    assert averaged != raw


def test_eval_reports_the_averaged_weights_and_the_raw_ones_when_asked(reference):
    summary = json.loads((reference / "summary.json").read_text())
    averaged = run_cli("eval", reference)
    raw = run_cli("eval", reference, "--raw-weights")
    assert averaged.returncode == 0 and raw.returncode == 0, describe(averaged) + describe(raw)
    averaged, raw = json.loads(averaged.stdout), json.loads(raw.stdout)
    assert averaged["val/loss"] == pytest.approx(summary["val/loss"], rel=1e-6)  # what training validated
    assert raw["val/loss"] != averaged["val/loss"]
    from_checkpoint = run_cli("eval", reference, "--checkpoint", "latest")
    assert json.loads(from_checkpoint.stdout) == averaged, describe(from_checkpoint)
    assert checkpoint_steps(reference)[-1] == TOTAL_STEPS


def test_fsdp_is_refused_with_one_message(capsys, tmp_path):
    user_error(capsys, "train", HEART, *TINY, "trainer.ema.decay=0.9", "distributed.strategy=fsdp",
               "--run-dir", tmp_path / "run", fragments=("trainer.ema is not available with distributed.strategy fsdp",))
    assert not (tmp_path / "run").exists()

"""GPU paths through the CLI: fp16 autocast with its grad scaler (saved in every checkpoint, restored on resume),
the CUDA RNG states in checkpoints, bf16 on the GPU.

Skipped on a machine without CUDA; on one with a GPU they run and assert. The rest of the suite hides GPUs
from the runs it starts (CUDA_VISIBLE_DEVICES="" in `cli_env`, its expectations are the CPU's); these tests
give the runs the GPUs the test process sees.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.numpy import load_file

import processes
from conftest import (
    WALL_CLOCK,
    assert_ok,
    assert_resumed,
    assert_user_error,
    checkpoint_dir,
    checkpoint_problem,
    checkpoint_steps,
    cli_env,
    newest_valid_checkpoint,
    read_jsonl,
    run_cli,
    workflow,
)

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU here (torch.cuda.is_available() is False); run on a GPU machine"
)

# heart: 6400 training points, 100 steps per epoch, 2 epochs; a checkpoint every 25 steps.
BASE = ["data.num_points=8000", "trainer.epochs=2", "checkpoint.every_steps=25", "checkpoint.keep_last=10",
        "logging.wandb=false", "trainer.log_every_steps=10"]


def gpu_env() -> dict[str, str]:
    return cli_env(CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES"))  # None: not set, all GPUs


def train_command(run_dir: Path, *overrides: str) -> list[object]:
    return [sys.executable, "-m", "trainwright", "train", "recipes/heart.yaml", *BASE, *overrides, "--run-dir", run_dir]


def curve(run_dir: Path) -> list[tuple]:
    return [(r["step"], k, v) for r in read_jsonl(run_dir / "metrics.jsonl") for k, v in r.items()
            if k not in ("step", "epoch", *WALL_CLOCK)]


@workflow
def fp16(folder: Path) -> dict:
    """An uninterrupted fp16 run and, beside it, one killed after its first checkpoint and resumed."""
    reference_dir, run_dir = folder / "reference", folder / "run"
    with processes.starter(folder) as start:
        reference = start(train_command(reference_dir, "trainer.mixed_precision=fp16"), gpu_env(), name="reference")
        killed = start(train_command(run_dir, "trainer.mixed_precision=fp16"), gpu_env(), name="killed")
        killed.wait_for("the first checkpoint", lambda: checkpoint_steps(run_dir))
        killed.kill()
        killed_at = newest_valid_checkpoint(run_dir)
        killed_scaler = (json.loads((checkpoint_dir(run_dir, killed_at) / "scaler.json").read_text())
                         if killed_at else None)
        resumed = processes.run(train_command(run_dir, "trainer.mixed_precision=fp16"), gpu_env())
        reference_code = reference.finish()
    return {"reference": reference_dir, "run": run_dir, "killed_at": killed_at, "killed_scaler": killed_scaler,
            "killed_output": killed.output(), "resumed": resumed, "reference_code": reference_code,
            "reference_output": reference.output()}


def test_fp16_runs_on_the_gpu_with_a_grad_scaler_in_every_checkpoint(fp16):
    assert fp16["reference_code"] == 0, fp16["reference_output"]
    assert "world_size=1 device=cuda precision=fp16" in fp16["reference_output"]
    for step in checkpoint_steps(fp16["reference"]):
        folder = checkpoint_dir(fp16["reference"], step)
        assert checkpoint_problem(folder) is None
        scaler = json.loads((folder / "scaler.json").read_text())
        assert isinstance(scaler, dict) and scaler["scale"] > 0, (step, scaler)
        assert {"growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"} <= scaler.keys()
    assert fp16["killed_scaler"] and fp16["killed_scaler"]["scale"] > 0


def test_fp16_resume_restores_the_grad_scaler_bitwise(fp16):
    assert fp16["reference_code"] == 0, fp16["reference_output"]
    result = assert_ok(fp16["resumed"])
    killed_at = fp16["killed_at"]
    assert killed_at is not None and 0 < killed_at < 200
    assert_resumed(result.stdout + result.stderr, killed_at)
    run, reference = fp16["run"], fp16["reference"]
    assert (run / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    assert curve(run) == curve(reference)
    # the scaler's scale and growth tracker went on as in the uninterrupted run
    last = f"step_{200:08d}"
    assert json.loads((run / "checkpoints" / last / "scaler.json").read_text()) == \
        json.loads((reference / "checkpoints" / last / "scaler.json").read_text())


def test_checkpoints_hold_the_cuda_rng_states(fp16):
    assert fp16["reference_code"] == 0, fp16["reference_output"]
    folder = checkpoint_dir(fp16["reference"], checkpoint_steps(fp16["reference"])[-1])
    states = load_file(folder / "rng_0.safetensors")
    assert set(states) == {"torch_cpu", *(f"cuda_{i}" for i in range(torch.cuda.device_count()))}
    assert all(state.size > 0 for state in states.values())


@workflow
def bf16_gpu(folder: Path):
    return run_cli("train", "recipes/heart.yaml", "data.num_points=2000", "trainer.epochs=1", "logging.wandb=false",
                   "trainer.mixed_precision=bf16", "--run-dir", folder / "run", env=gpu_env()), folder / "run"


def test_bf16_on_the_gpu(bf16_gpu):
    result, run_dir = bf16_gpu
    if torch.cuda.is_bf16_supported():
        assert_ok(result)
        assert "world_size=1 device=cuda precision=bf16" in result.stdout
        weights = load_file(run_dir / "model.safetensors")
        assert all(str(w.dtype) == "float32" for w in weights.values())  # the master weights stay in fp32
    else:  # README: a precision the device cannot run is one clear error
        assert_user_error(result.returncode, result.stderr, "trainer.mixed_precision=bf16 cannot run here")

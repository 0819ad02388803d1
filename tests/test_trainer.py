"""The loop's options, in process on tiny heart runs: accumulation, clipping, precision, max_steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainwright.accelerate_compat import forget_accelerator_state
from trainwright.recipe import load_recipe
from trainwright.training import train as train_recipe

HEART = Path(__file__).resolve().parent.parent / "recipes" / "heart.yaml"
TINY = ["data.num_points=2000", "trainer.max_steps=20", "logging.wandb=false", "checkpoint.every_epochs=null"]


@pytest.fixture(autouse=True)
def _one_precision_per_run():
    """These tests train several precisions in one process (the CLI trains one run per process)."""
    forget_accelerator_state()


def train(tmp_path: Path, name: str, *overrides: str) -> dict[str, torch.Tensor]:
    forget_accelerator_state()
    outcome = train_recipe(load_recipe(HEART, [*TINY, *overrides]), tmp_path / name)
    assert outcome.status == "completed" and outcome.summary["step"] == 20
    return load_file(tmp_path / name / "model.safetensors")


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    """Two micro-batches of 32 per step see the same 64 samples as one batch of 64, and the same gradient."""
    plain = train(tmp_path, "plain", "data.batch_size=64")
    accumulated = train(tmp_path, "accum", "data.batch_size=32", "trainer.grad_accum_steps=2")
    assert _max_difference(plain, accumulated) < 1e-5
    half_batch = train(tmp_path, "half", "data.batch_size=32")  # 20 steps of 32: a different run
    assert _max_difference(plain, half_batch) > 1e-3


def test_gradient_clipping_changes_the_updates(tmp_path):
    plain = train(tmp_path, "plain")
    clipped = train(tmp_path, "clipped", "trainer.grad_clip=0.01")
    assert _max_difference(plain, clipped) > 1e-3


def test_bf16_autocast_runs_on_the_cpu_and_changes_the_numbers(tmp_path, capsys):
    fp32 = train(tmp_path, "fp32")
    bf16 = train(tmp_path, "bf16", "trainer.mixed_precision=bf16")
    assert "precision=bf16" in capsys.readouterr().out
    assert all(t.dtype == torch.float32 for t in bf16.values())  # master weights stay in fp32
    assert 0 < _max_difference(fp32, bf16) < 0.1


@pytest.mark.parametrize("max_steps", [7, 45])
def test_max_steps_caps_the_run_mid_epoch(tmp_path, max_steps):
    recipe = load_recipe(HEART, [*TINY, f"trainer.max_steps={max_steps}"])  # 25 steps per epoch
    summary = train_recipe(recipe, tmp_path / "run").summary
    assert summary["step"] == max_steps and summary["epoch"] == max_steps // 25
    assert summary["samples_seen"] == max_steps * 64

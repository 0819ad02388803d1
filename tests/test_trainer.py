"""The loop's options on tiny heart runs: accumulation, precision, max_steps in process; clipping through the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file

import processes
from conftest import cli_env
from trainwright.distributed.accelerate_compat import forget_accelerator_state
from trainwright.recipe import load_recipe
from trainwright.training.start import train as train_recipe

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


# One plain SGD step (lr 1, no momentum) from the seed's initial weights: the weights move by exactly the
# (clipped) gradient. 400 training points, the first batch of 64.
ONE_STEP = ["data.num_points=500", "trainer.max_steps=1", "optimizer.lr=1.0", "optimizer.momentum=0",
            "logging.wandb=false"]


def _flat_weights(run_dir: Path) -> np.ndarray:
    """All final weights as one float64 vector (tensors in name order), read straight from the file."""
    tensors = load_numpy(run_dir / "model.safetensors")
    return np.concatenate([tensors[k].astype(np.float64).ravel() for k in sorted(tensors)])


def test_gradient_clipping_clips_the_gradient_norm(tmp_path):
    """With grad_clip=c below the gradient's norm, one step moves the weights by lr*c exactly, along the
    unclipped gradient. The starting weights come from a run whose lr (1e-30) cannot move float32 weights."""
    clip = 0.05
    clips = {"start": None, "clipped": clip, "plain": None}
    with processes.starter(tmp_path) as start:
        runs = {}
        for name, value in clips.items():
            overrides = [*ONE_STEP, *(["optimizer.lr=1e-30"] if name == "start" else []),
                         *([f"trainer.grad_clip={value}"] if value else [])]
            runs[name] = start([sys.executable, "-m", "trainwright", "train", HEART, *overrides,
                                "--run-dir", tmp_path / name], cli_env(), name=name)
        for process in runs.values():
            assert process.finish() == 0, process.describe()
    w0, clipped, plain = (_flat_weights(tmp_path / name) for name in clips)
    gradient = w0 - plain  # lr 1: the full gradient
    norm = np.linalg.norm(gradient)
    assert norm > 2 * clip, f"the gradient norm {norm} is too small for this test's clip value"
    update = w0 - clipped
    assert np.linalg.norm(update) == pytest.approx(clip, rel=1e-3)  # the clipped gradient's norm
    assert update @ (gradient / norm) == pytest.approx(clip, rel=1e-3)  # along the unclipped gradient


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
    assert summary["step"] == max_steps and summary["epoch"] == max_steps // 25 + 1  # counted from 1
    assert summary["samples_seen"] == max_steps * 64


def test_deterministic_kernels_are_the_recipes_choice(tmp_path):
    """trainer.deterministic (default true) switches torch's deterministic mode on for the run; false
    switches it off (the mode is process-wide, so a run sets it either way)."""
    observed = {}
    original = torch.set_deterministic_debug_mode

    def recorded(mode):
        original(mode)
        observed[len(observed)] = torch.are_deterministic_algorithms_enabled()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "set_deterministic_debug_mode", recorded)
        plain = train(tmp_path, "plain")
        fast = train(tmp_path, "fast", "trainer.deterministic=false")
    assert observed == {0: True, 1: False}
    assert all(torch.equal(plain[k], fast[k]) for k in plain)  # this MLP on the CPU has no nondeterministic kernel


def test_the_unlogged_loss_sums_as_a_float64_running_sum_across_folds_and_resumes():
    """RunningLoss keeps losses and sums them later; the sum must be the float64 running sum's, bit for bit,
    also when it is read mid-way (a checkpoint) and a new one goes on from there (the resumed run). The values
    make the order matter: 1 + 2^-53 rounds back to 1, so the running sum drops every 2^-53 that follows a 1,
    while a sum that adds the small ones together first keeps them."""
    from trainwright.training.running_loss import FOLD_AT, RunningLoss

    values = ([1.0] + [2.0**-53] * 99) * 4 + [0.1, 3.0] * 7
    losses = [torch.tensor(v, dtype=torch.float32) for v in values]
    running = torch.zeros((), dtype=torch.float64)
    for loss in losses:
        running += loss
    uninterrupted = RunningLoss()
    for loss in losses:
        uninterrupted.add(loss)
    assert uninterrupted.read() == (running.item(), len(values))
    assert torch.tensor(values, dtype=torch.float64).sum().item() != running.item()  # the order does matter here
    for cut in (1, 2, FOLD_AT - 1, FOLD_AT, len(values) - 3):
        before = RunningLoss()
        for loss in losses[:cut]:
            before.add(loss)
        resumed = RunningLoss(*before.read())
        for loss in losses[cut:]:
            resumed.add(loss)
        assert resumed.read() == (running.item(), len(values)), cut
    uninterrupted.reset()
    assert uninterrupted.read() == (0.0, 0)

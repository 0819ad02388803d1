"""trainer.ema: the average itself, a heart run killed mid-epoch that resumes bitwise (averaged and raw
weights; one process, two under ddp, two under fsdp), and `eval` on the averaged weights by default and on
the raw ones when asked, from the final weights and from a (full or sharded) checkpoint; a full
checkpoint's averages resumed into fsdp shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import resuming
from conftest import HEART_SMALL, checkpoint_steps, describe, run_cli
from reliability_helpers import HEART, call
from trainwright.recipe import EmaConfig
from trainwright.training.ema import WeightAverage

CONFIGS = {"one": None, "ddp": "cpu_2proc.yaml", "fsdp": "fsdp_cpu_2proc.yaml"}
# heart, 2 epochs of 10 steps (global batches of 64 on any process count), a checkpoint every 4 steps; the killed
# runs are killed right after the step-8 checkpoint: mid-epoch, past the average's start_step.
STEPS_PER_EPOCH = 10
KILL_STEP = 8
SMALL = [HEART_SMALL, "trainer.epochs=2", "logging.wandb=false", "checkpoint.every_steps=4", "checkpoint.keep_last=3",
         "trainer.ema.decay=0.9", "trainer.ema.start_step=3", "trainer.ema.every_steps=2"]


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


def args(run_dir: Path | None = None) -> list[object]:
    return ["train", HEART, *SMALL, *(["--run-dir", run_dir] if run_dir else [])]


def world(launch: str) -> str:
    return "world_size=1 device=cpu" if launch == "one" else f"world_size=2 device=cpu precision=no strategy={launch}"


def launcher(launch: str) -> list[object]:
    config = CONFIGS[launch]
    return resuming.launcher(config) if config else []


def files(run_dir: Path) -> tuple[bytes, bytes]:
    return (run_dir / "model.safetensors").read_bytes(), (run_dir / "model_raw.safetensors").read_bytes()


def uninterrupted(reference_runs, launch: str = "one") -> Path:
    """The reference run of `launch` (shared: trained once)."""
    run_dir = reference_runs(args(), CONFIGS[launch], world_size=1 if launch == "one" else 2)
    assert world(launch) in (run_dir.parent / "output.txt").read_text()
    return run_dir


@pytest.fixture(scope="module")
def reference(reference_runs) -> Path:
    return uninterrupted(reference_runs)


@pytest.fixture(scope="module")
def fsdp_reference(reference_runs) -> Path:
    return uninterrupted(reference_runs, "fsdp")


@pytest.mark.parametrize("launch", ["one", "ddp", "fsdp"])
def test_killed_mid_epoch_resumes_bitwise_averaged_and_raw(launch, reference_runs, tmp_path):
    expected = uninterrupted(reference_runs, launch)
    run_dir = tmp_path / "run"
    resuming.kill_at(KILL_STEP, args(run_dir), run_dir, launcher(launch))
    averages = "ema" if launch == "fsdp" else "ema.safetensors"  # shards, or one file
    assert (run_dir / "checkpoints" / f"step_{KILL_STEP:08d}" / averages).exists()
    result = resuming.resume(KILL_STEP, args(run_dir), launcher(launch))
    assert world(launch) in result.stdout
    averaged, raw = files(run_dir)
    assert (averaged, raw) == files(expected)
    assert averaged != raw


def evaluated(capsys, *args: object) -> dict:
    """`trainwright eval ARGS` in this process: the metrics it prints."""
    code, out, err = call(capsys, "eval", *args)
    assert code == 0 and "Traceback" not in err, err
    return json.loads(out)


@pytest.mark.parametrize("kind", ["full", "sharded"])
def test_eval_reports_the_averaged_weights_and_the_raw_ones_when_asked(kind, request, capsys):
    run_dir = request.getfixturevalue("reference" if kind == "full" else "fsdp_reference")
    assert checkpoint_steps(run_dir)[-1] == 2 * STEPS_PER_EPOCH
    summary = json.loads((run_dir / "summary.json").read_text())
    averaged, raw = evaluated(capsys, run_dir), evaluated(capsys, run_dir, "--raw-weights")
    assert averaged["val/loss"] == pytest.approx(summary["val/loss"], rel=1e-6)  # what training validated
    assert raw["val/loss"] != averaged["val/loss"]
    assert evaluated(capsys, run_dir, "--checkpoint", "latest") == averaged  # the last checkpoint's averages
    assert evaluated(capsys, run_dir, "--checkpoint", "latest", "--raw-weights") == raw


def test_a_full_checkpoint_s_averages_resume_into_fsdp_shards(tmp_path):
    """A one-process (full) checkpoint resumed on two fsdp processes: each takes its shards of the saved
    averages. Step 5 makes no update (every_steps=2), so its sharded averages are step 4's, bitwise."""
    run_dir = tmp_path / "run"
    base = ["train", HEART, HEART_SMALL, "trainer.epochs=2", "logging.wandb=false", "checkpoint.every_steps=4",
            "trainer.ema.decay=0.9", "trainer.ema.every_steps=2", "--run-dir", run_dir]
    one = run_cli(*base, "trainer.max_steps=4")
    assert one.returncode == 0, describe(one)
    fsdp = resuming.resume(4, [*base, "trainer.max_steps=5"], resuming.launcher(CONFIGS["fsdp"]))
    assert "strategy=fsdp" in fsdp.stdout, describe(fsdp)
    from trainwright.checkpoint.sharded import consolidated_part

    full = load_file(run_dir / "checkpoints" / "step_00000004" / "ema.safetensors")
    sharded = consolidated_part(run_dir / "checkpoints" / "step_00000005" / "ema")
    assert full.keys() == sharded.keys() and all(torch.equal(full[k], sharded[k]) for k in full)

"""trainer.ema: the average itself, a heart run killed mid-epoch that resumes bitwise (averaged and raw
weights; one process, two under ddp, two under fsdp), and `eval` on the averaged weights by default and on
the raw ones when asked, from the final weights and from a (full or sharded) checkpoint; a full
checkpoint's averages resumed into fsdp shards."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import processes
from conftest import REPO, assert_resumed, checkpoint_steps, cli_env, describe, run_cli
from reliability_helpers import HEART, call
from trainwright.recipe import EmaConfig
from trainwright.training.ema import WeightAverage

CONFIGS = {
    "ddp": REPO / "accelerate_configs" / "cpu_2proc.yaml",
    "fsdp": REPO / "accelerate_configs" / "fsdp_cpu_2proc.yaml",
}
# 2 epochs, a checkpoint every 50 steps. 25600 training points / 64 = 400 steps per epoch on one process and
# under ddp; under fsdp, whose steps take ~35 ms on 2 CPU cores, 12800 / 64 = 200. The killed runs are killed
# after the checkpoint at a quarter of the first epoch, long after the average's start_step.
STEPS_PER_EPOCH = {"one": 400, "ddp": 400, "fsdp": 200}
SMALL = ["trainer.epochs=2", "logging.wandb=false", "checkpoint.every_steps=50", "checkpoint.keep_last=3",
         "trainer.ema.decay=0.99", "trainer.ema.start_step=30", "trainer.ema.every_steps=2"]


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


def command(run_dir: Path, launch: str, *overrides: str) -> list[object]:
    """One process ('one'), or two under 'ddp' or 'fsdp'."""
    points = STEPS_PER_EPOCH[launch] * 64 * 5 // 4  # val_fraction 0.2
    args = ["-m", "trainwright", "train", HEART, f"data.num_points={points}", *SMALL, *overrides, "--run-dir", run_dir]
    if launch == "one":
        return [sys.executable, *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", CONFIGS[launch],
            "--main_process_port", processes.free_port(), *args]


def train(run_dir: Path, launch: str = "one", *overrides: str):
    result = processes.run(command(run_dir, launch, *overrides), cli_env())
    assert result.returncode == 0 and "Traceback" not in result.stderr, describe(result)
    world = "world_size=1 device=cpu" if launch == "one" else f"world_size=2 device=cpu precision=no strategy={launch}"
    assert world in result.stdout
    return result


def files(run_dir: Path) -> tuple[bytes, bytes]:
    return (run_dir / "model.safetensors").read_bytes(), (run_dir / "model_raw.safetensors").read_bytes()


def uninterrupted(run_dir: Path, launch: str = "one") -> Path:
    """The reference run: only its final checkpoint is saved (how often a run saves changes none of its
    weights, and the killed runs save every 50 steps)."""
    train(run_dir, launch, "checkpoint.every_steps=null")
    return run_dir


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return uninterrupted(tmp_path_factory.mktemp("reference") / "run")


@pytest.fixture(scope="module")
def fsdp_reference(tmp_path_factory) -> Path:
    return uninterrupted(tmp_path_factory.mktemp("fsdp") / "run", "fsdp")


@pytest.mark.parametrize("launch", ["one", "ddp", "fsdp"])
def test_killed_mid_epoch_resumes_bitwise_averaged_and_raw(launch, request, start, tmp_path, tmp_path_factory):
    if launch == "ddp":
        expected = uninterrupted(tmp_path_factory.mktemp("ddp") / "run", "ddp")
    else:
        expected = request.getfixturevalue("reference" if launch == "one" else "fsdp_reference")
    run_dir = tmp_path / "run"
    killed = start(command(run_dir, launch), cli_env(), name="killed")
    per_epoch = STEPS_PER_EPOCH[launch]
    killed.wait_for(
        "a checkpoint inside the first epoch", lambda: (checkpoint_steps(run_dir) or [0])[-1] >= per_epoch // 4
    )
    killed.kill()  # the whole process tree
    killed_at = checkpoint_steps(run_dir)[-1]  # a folder is named step_* once complete
    assert killed_at < 2 * per_epoch and killed_at % per_epoch, killed.describe()
    averages = "ema" if launch == "fsdp" else "ema.safetensors"  # shards, or one file
    assert (run_dir / "checkpoints" / f"step_{killed_at:08d}" / averages).exists()

    result = train(run_dir, launch)
    assert_resumed(result.stdout + result.stderr, killed_at)
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
    assert checkpoint_steps(run_dir)[-1] == 2 * STEPS_PER_EPOCH["one" if kind == "full" else "fsdp"]
    summary = json.loads((run_dir / "summary.json").read_text())
    averaged, raw = evaluated(capsys, run_dir), evaluated(capsys, run_dir, "--raw-weights")
    assert averaged["val/loss"] == pytest.approx(summary["val/loss"], rel=1e-6)  # what training validated
    assert raw["val/loss"] != averaged["val/loss"]
    assert evaluated(capsys, run_dir, "--checkpoint", "latest") == averaged  # the last checkpoint's averages
    assert evaluated(capsys, run_dir, "--checkpoint", "latest", "--raw-weights") == raw


def test_a_full_checkpoint_s_averages_resume_into_fsdp_shards(tmp_path):
    """A one-process (full) checkpoint resumed on two fsdp processes: each takes its shards of the saved
    averages. Step 101 makes no update (every_steps=2), so its sharded averages are step 100's, bitwise."""
    run_dir = tmp_path / "run"
    base = ["data.num_points=8000", "trainer.epochs=2", "logging.wandb=false", "checkpoint.every_steps=50",
            "checkpoint.keep_last=3", "trainer.ema.decay=0.9", "trainer.ema.every_steps=2", "--run-dir", run_dir]
    one = run_cli("train", HEART, *base, "trainer.max_steps=100")
    assert one.returncode == 0, describe(one)
    fsdp = processes.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", CONFIGS["fsdp"],
                          "--main_process_port", processes.free_port(), "-m", "trainwright", "train", HEART, *base,
                          "trainer.max_steps=101"], cli_env())
    assert fsdp.returncode == 0 and "strategy=fsdp" in fsdp.stdout, describe(fsdp)
    assert_resumed(fsdp.stdout + fsdp.stderr, 100)
    from trainwright.checkpoint.sharded import consolidated_part

    full = load_file(run_dir / "checkpoints" / "step_00000100" / "ema.safetensors")
    sharded = consolidated_part(run_dir / "checkpoints" / "step_00000101" / "ema")
    assert full.keys() == sharded.keys() and all(torch.equal(full[k], sharded[k]) for k in full)

"""Tied weights (one parameter under two names, as a language model's embedding and output head) survive
every checkpoint kind: full, sharded (FSDP2 with `shard_modules`), resharded, exported and the final
model.safetensors, which loads back into a fresh model with the tie intact.

The model is tests/tied_models.py's TiedNet (`decode.weight` is `encode.weight`) on the heart data: 1600
training points, a global batch of 64 -> 25 steps per epoch, 30 steps, a checkpoint every 10."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import TESTS, assert_resumed, cli_env_with_tests
from processes import free_port
from processes import run as run_command
from test_fsdp import DDP_2PROC, FSDP_2PROC

pytestmark = pytest.mark.slow

RECIPE = {
    "name": "tied", "seed": 0,
    "data": {"name": "heart", "num_points": 2000, "seed": 1, "val_fraction": 0.2, "batch_size": 64},
    "model": {"name": "tied_models:tied_net", "width": 8, "blocks": 2},
    "loss": {"name": "bce"},
    "optimizer": {"name": "adamw", "lr": 0.01},
    "trainer": {"epochs": 2, "max_steps": 30, "log_every_steps": 10},
    "checkpoint": {"every_steps": 10, "keep_last": 5},
    "logging": {"wandb": False},
    "distributed": {"shard_modules": ["Block"]},
}


def run(*args: str, processes: int = 1, config: Path = FSDP_2PROC) -> subprocess.CompletedProcess:
    """`python -m trainwright ARGS` (under `accelerate launch` with `config` for several processes)."""
    launch = [] if processes == 1 else [
        "-m", "accelerate.commands.launch", "--config_file", str(config), "--main_process_port", str(free_port()),
        "--num_processes", str(processes),
    ]
    result = run_command(
        [sys.executable, *launch, "-m", "trainwright", *args],
        cli_env_with_tests(),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


def train(recipe: Path, run_dir: Path, *args: str, **launch) -> subprocess.CompletedProcess:
    return run("train", str(recipe), "--run-dir", str(run_dir), *args, **launch)


def step(run_dir: Path, number: int) -> Path:
    return run_dir / "checkpoints" / f"step_{number:08d}"


def tensor_names(path: Path) -> set[str]:
    with safe_open(path, "pt") as file:
        return set(file.keys())


def assert_tied_model_loads(run_dir: Path, weights: dict[str, torch.Tensor]) -> None:
    """The run's final weights load into a fresh model whose tie is intact."""
    sys.path.insert(0, str(TESTS))
    import trainwright

    model = trainwright.load_run(run_dir).model
    assert model.decode.weight is model.encode.weight
    assert torch.equal(model.encode.weight, weights["encode.weight"])
    assert torch.equal(model.out.weight, weights["out.weight"])


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tied") / "tied.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory) -> Path:
    """An uninterrupted run on 2 processes under FSDP2, each Block sharded by itself."""
    run_dir = tmp_path_factory.mktemp("tied_fsdp") / "run"
    result = train(recipe, run_dir, processes=2)
    assert "world_size=2 device=cpu precision=no strategy=fsdp" in result.stdout
    return run_dir


def test_sharded_checkpoints_and_final_weights_hold_a_tied_weight_once(reference):
    for shard in (step(reference, 10) / "model").glob("*.safetensors"):
        names = tensor_names(shard)
        assert "encode.weight" in names and "decode.weight" not in names, names
    final = load_file(reference / "model.safetensors")
    assert "encode.weight" in final and "decode.weight" not in final
    assert_tied_model_loads(reference, final)


def test_a_sharded_resume_at_the_same_process_count_is_bitwise(reference, recipe, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    result = train(recipe, run_dir, "--resume", str(step(run_dir, 10)), processes=2)
    assert_resumed(result.stdout + result.stderr, 10)
    assert (run_dir / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()


def test_full_to_sharded_to_unsharded_resumes_keep_the_tie(reference, recipe, tmp_path):
    run_dir = tmp_path / "run"
    train(recipe, run_dir, "trainer.max_steps=10")  # one process: a full checkpoint
    assert tensor_names(step(run_dir, 10) / "model.safetensors") >= {"encode.weight"}
    assert "decode.weight" not in tensor_names(step(run_dir, 10) / "model.safetensors")
    fsdp = train(recipe, run_dir, "trainer.max_steps=20", processes=2)  # full -> sharded
    assert "strategy=fsdp" in fsdp.stdout
    assert_resumed(fsdp.stdout + fsdp.stderr, 10)
    assert (step(run_dir, 20) / "model").is_dir()
    single = train(recipe, run_dir)  # sharded -> one unsharded process
    assert "world_size=1 device=cpu precision=no strategy=ddp" in single.stdout
    assert_resumed(single.stdout + single.stderr, 20)
    weights, expected = load_file(run_dir / "model.safetensors"), load_file(reference / "model.safetensors")
    assert weights.keys() == expected.keys()
    for key in expected:  # the same training; only the order of the processes' sums differs
        torch.testing.assert_close(weights[key], expected[key], rtol=1e-4, atol=1e-5)
    assert_tied_model_loads(run_dir, weights)


def test_a_full_checkpoint_resumes_bitwise_with_the_tie(recipe, tmp_path):
    run_dir = tmp_path / "run"
    train(recipe, run_dir, processes=2, config=DDP_2PROC)
    expected = (run_dir / "model.safetensors").read_bytes()
    result = train(recipe, run_dir, "--resume", str(step(run_dir, 10)), processes=2, config=DDP_2PROC)
    assert_resumed(result.stdout + result.stderr, 10)
    assert (run_dir / "model.safetensors").read_bytes() == expected
    assert_tied_model_loads(run_dir, load_file(run_dir / "model.safetensors"))


def test_export_of_a_sharded_checkpoint_keeps_the_tie(reference, tmp_path):
    out = tmp_path / "weights.safetensors"
    run("export", str(step(reference, 30)), "--out", str(out))
    exported, final = load_file(out), load_file(reference / "model.safetensors")
    assert exported.keys() == final.keys()
    assert all(torch.equal(exported[key], final[key]) for key in final)

"""Token losses are divided by the counted targets of the whole optimizer step (every process, every
micro-batch): a user's (batch, time, vocab) model on sequences with 1 to 12 real tokens of 12 (the rest
-100) ends within 1e-4 of the 1-process batch-24 weights on 2 and 3 CPU processes and on 1 process as
batch 8 x grad_accum_steps 3, and logs the same training loss (README: Loss normalisation). Before, each
process and micro-batch averaged over its own tokens, and the weights differed by ~2e-3."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, TESTS, cli_env_with_tests
from processes import free_port, run

pytestmark = pytest.mark.slow

CONFIGS = REPO / "accelerate_configs"
# 240 training sequences, global batch 24: 10 steps per epoch, 30 SGD steps.
RECIPE = {
    "name": "padded", "seed": 0,
    "data": {"name": "padded_tokens:padded", "batch_size": 24},
    "model": {"name": "padded_tokens:TokenNet"},
    "loss": {"name": "cross_entropy"},
    "optimizer": {"name": "sgd", "lr": 0.5},
    "trainer": {"epochs": 3, "log_every_steps": 5},
    "checkpoint": {"every_epochs": None},
    "logging": {"wandb": False},
}


def train(tmp_path: Path, name: str, *overrides: str, config: str | None = None) -> tuple[dict, list[float]]:
    """Train the recipe (under `accelerate launch` with `config`); its final weights, and its logged
    train/loss values followed by its final val/loss."""
    recipe = tmp_path / "padded.json"
    recipe.write_text(json.dumps(RECIPE))
    launch = [] if config is None else ["-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
                                        "--main_process_port", str(free_port())]
    result = run([sys.executable, *launch, "-m", "trainwright", "train", recipe, *overrides, "--run-dir",
                  tmp_path / name], cli_env_with_tests(), timeout=600)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    world = {None: 1, "cpu_2proc.yaml": 2, "cpu_3proc.yaml": 3}[config]
    assert f"world_size={world} " in result.stdout and "Run complete at step 30" in result.stdout, result.stdout
    records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    logged = [r["train/loss"] for r in records if "train/loss" in r]
    logged.append(json.loads((tmp_path / name / "summary.json").read_text())["val/loss"])
    return load_file(tmp_path / name / "model.safetensors"), logged


def test_padded_sequences_train_the_same_on_any_process_count_and_accumulation(tmp_path):
    reference, reference_loss = train(tmp_path, "one")
    runs = {
        "2 processes": train(tmp_path, "two", config="cpu_2proc.yaml"),
        "3 processes": train(tmp_path, "three", config="cpu_3proc.yaml"),
        "batch 8 x accumulation 3": train(tmp_path, "accum", "data.batch_size=8", "trainer.grad_accum_steps=3"),
    }
    for name, (weights, losses) in runs.items():
        difference = max((weights[key] - reference[key]).abs().max().item() for key in reference)
        assert difference < 1e-4, (name, difference)
        assert losses == pytest.approx(reference_loss, rel=1e-5), name
    moved = max((reference[key] - value).abs().max().item() for key, value in _initial().items())
    assert moved > 0.1  # the steps were large enough for the weighting to show


def _initial() -> dict[str, torch.Tensor]:
    sys.path.insert(0, str(TESTS))
    from padded_tokens import TokenNet

    torch.manual_seed(0)
    return TokenNet().state_dict()

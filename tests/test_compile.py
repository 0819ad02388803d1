"""trainer.compile: the model is torch.compiled in place; checkpoints keep the plain model's names and a
compiled run resumes bitwise (one process; compiling takes tens of seconds on this CPU)."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

import resuming
from conftest import HEART_MEDIUM, RECIPES, assert_ok, run_cli

TINY = [HEART_MEDIUM, "trainer.epochs=1", "checkpoint.every_steps=10", "logging.wandb=false",
        "trainer.compile=true"]

pytestmark = pytest.mark.slow


def test_a_compiled_run_keeps_state_names_and_resumes_bitwise(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    first = assert_ok(run_cli("train", RECIPES / "heart.yaml", *TINY, "--run-dir", whole, timeout=600))
    assert "world_size=1 device=cpu precision=no strategy=ddp compile=default" in first.stdout
    resuming.kill_and_resume(10, ["train", RECIPES / "heart.yaml", *TINY, "--run-dir", parts], parts, timeout=600)
    resuming.assert_same_weights(parts, whole)
    names = ["1.bias", "1.weight", "3.bias", "3.weight", "5.bias", "5.weight"]
    assert sorted(load_file(whole / "model.safetensors")) == names

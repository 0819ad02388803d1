"""tiny_gpt under the shipped FSDP config on 2 CPU processes with its default shard units (its blocks; the
tied embedding and output layer in the root's unit): SIGKILLed mid-epoch (the whole process tree), the same
command ends bitwise equal to an uninterrupted run, and the run dir then goes on at 1 process. The model
keeps the recipe's tied embeddings (checkpoint/ties.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import resuming
from conftest import TEXT_SMALL, assert_ok, assert_resumed, cli_env, text_corpus
from test_fsdp import FSDP_2PROC

pytestmark = pytest.mark.slow
TOTAL_STEPS = 30


def _args(corpus: Path, run_dir: Path, *overrides: str) -> list[object]:
    return ["train", "recipes/tiny_gpt.yaml", f"data.path={corpus}", "data.pattern=*", "data.max_bytes=null",
            "data.context=16", "data.batch_size=16", "model.context=16", "model.layers=2", "model.width=32",
            "model.heads=2", f"trainer.max_steps={TOTAL_STEPS}", "scheduler.warmup_steps=5", "checkpoint.every_steps=5",
            "logging.wandb=false", *overrides, "--run-dir", str(run_dir)]


def _launch(processes: int) -> list[object]:
    return resuming.launcher(FSDP_2PROC, "--num_processes", processes) if processes > 1 else []


def _env_with(cache: Path) -> dict[str, str]:
    return {**cli_env(), "TRAINWRIGHT_CACHE": str(cache)}


def train(corpus: Path, run_dir: Path, cache: Path, *overrides: str, processes: int = 2) -> str:
    result = assert_ok(resuming.run(_args(corpus, run_dir, *overrides), _launch(processes), _env_with(cache),
                                    timeout=600))
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return text_corpus(tmp_path_factory.mktemp("corpus") / "argparse.txt", TEXT_SMALL)  # ~70 steps per epoch


def test_sharded_gpt_killed_mid_epoch_resumes_bitwise_then_on_one_process(corpus, tmp_path):
    cache = tmp_path / "cache"
    reference = tmp_path / "reference"
    out = train(corpus, reference, cache)
    assert "world_size=2 device=cpu precision=no strategy=fsdp" in out
    assert f"Run complete at step {TOTAL_STEPS}:" in out

    # Validation on 2 processes sums token counts: one process's eval of the same weights says the same.
    evaluated = resuming.run(["eval", reference], env=_env_with(cache))
    assert evaluated.returncode == 0, evaluated.stderr
    summary = json.loads((reference / "summary.json").read_text())
    for key, value in json.loads(evaluated.stdout).items():
        assert value == pytest.approx(summary[key], rel=1e-5), key

    run_dir = tmp_path / "run"
    out = resuming.kill_and_resume(15, _args(corpus, run_dir), run_dir, _launch(2), _env_with(cache)).stdout
    assert "strategy=fsdp" in out
    resuming.assert_same_weights(run_dir, reference)

    earlier = sorted(run_dir.glob("checkpoints/step_*"))[0]  # kept: keep_last 2
    step = int(earlier.name[5:])
    one = train(corpus, run_dir, cache, "--resume", str(earlier), processes=1)
    assert "world_size=1 device=cpu" in one
    assert_resumed(one, step)
    assert f"Run complete at step {TOTAL_STEPS}:" in one
    weights, expected = load_file(run_dir / "model.safetensors"), load_file(reference / "model.safetensors")
    for key in expected:  # the same training; only the order of the processes' sums differs
        torch.testing.assert_close(weights[key], expected[key], rtol=1e-4, atol=1e-5)

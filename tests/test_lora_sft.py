"""The shipped recipes/lora_sft.yaml (issue 28) made small: examples/make_lora_base.py makes its base (a tiny
GPT-2 pretrained on the standard library's source) and its reversal items, the LoRA run's validation loss
falls, a run killed at a chosen step resumes bitwise, its checkpoints hold a small fraction of the weights'
bytes, `predict --prompt` answers, and `exact_match` (metrics.py) is the share of held-out prompts that
greedy generation answers exactly. That the exported adapter loads with PeftModel.from_pretrained to the
merged model's logits is tests/test_adapters.py's (test_lora_on_a_pretrained_gpt2_...)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import transformers

import processes
from conftest import REPO, assert_resumed, checkpoint_dir, cli_env_with_tests, describe, metrics_by_step
from trainwright import load_run
from trainwright.data.bundle import IGNORE_INDEX, Task
from trainwright.models.metrics import exact_match

KILLER = REPO / "tests" / "kill_at_step.py"
SCRIPT = REPO / "examples" / "make_lora_base.py"
# 200 items (160 train, 40 held out), batches of 16: 10 steps an epoch, 3 epochs; LoRA of rank 2 on the tiny base.
SMALL = ["data.batch_size=16", "adapter.r=2", "adapter.lora_alpha=4", "trainer.epochs=3", "checkpoint.every_steps=5",
         "logging.wandb=false", "trainer.log_every_steps=5"]


def example_script():
    spec = importlib.util.spec_from_file_location("make_lora_base", SCRIPT)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """The base and the items, as the script makes them, small (a 1-block GPT-2 of width 32, 30 steps)."""
    folder = tmp_path_factory.mktemp("lora_sft") / "data"
    result = processes.run([sys.executable, SCRIPT, folder, "--steps", "30", "--layers", "1", "--width", "32",
                            "--items", "200"], cli_env_with_tests())
    assert result.returncode == 0, describe(result)
    assert "the base model's exact match on the 40 held-out prompts: 0.000 (0/40)" in result.stdout
    return folder


def train(made: Path, run_dir: Path, script: list[object] | None = None):
    recipe = REPO / "recipes" / "lora_sft.yaml"
    return processes.run([sys.executable, *(script or ["-m", "trainwright"]), "train", recipe,
                          f"data.path={made / 'reverse.jsonl'}", f"data.tokenizer={made / 'base'}",
                          f"model.pretrained={made / 'base'}", *SMALL, "--run-dir", run_dir], cli_env_with_tests())


@pytest.fixture(scope="module")
def whole(made, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("lora_sft") / "run"
    result = train(made, run_dir)
    assert result.returncode == 0 and "Traceback" not in result.stderr, describe(result)
    return run_dir


def test_the_lora_run_trains_and_its_checkpoints_hold_a_small_fraction_of_the_weights(whole):
    val = [record["val/loss"] for step, record in sorted(metrics_by_step(whole).items()) if "val/loss" in record]
    assert len(val) == 3 and val[-1] < val[0], val
    adapter = (checkpoint_dir(whole, 30) / "model.safetensors").stat().st_size
    assert adapter < 0.125 * (whole / "model.safetensors").stat().st_size  # the merged weights, whole


def test_a_killed_lora_run_resumes_bitwise(made, whole, tmp_path):
    run_dir = tmp_path / "run"
    killed = train(made, run_dir, script=[KILLER, "15"])
    assert killed.returncode == -9, describe(killed)
    resumed = train(made, run_dir)
    assert resumed.returncode == 0, describe(resumed)
    assert_resumed(resumed.stdout + resumed.stderr, 15)
    assert (run_dir / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()


def test_exact_match_is_what_greedy_generation_answers_and_predict_answers(made, whole):
    """The run's val/exact_match (one forward pass a batch) equals the share of held-out prompts whose
    response (and <eos>) greedy generation gives token by token, as the script counts for the base."""
    items = [json.loads(line) for line in (made / "reverse.jsonl").read_text().splitlines()][160:]
    run = load_run(whole)
    tokenizer = transformers.AutoTokenizer.from_pretrained(made / "base")
    right, _ = example_script().exact_match(run.model.eval(), tokenizer, items)
    assert run.evaluate()["val/exact_match"] == pytest.approx(right / len(items))
    answer = processes.run([sys.executable, "-m", "trainwright", "predict", whole, "--prompt", "reverse abcd: ",
                            "--length", "5", "--temperature", "0"], cli_env_with_tests())
    assert answer.returncode == 0 and answer.stdout.startswith("reverse abcd: "), describe(answer)


def test_exact_match_counts_each_run_of_counted_targets_as_one_response():
    task = Task("sequence")
    targets = torch.tensor([[IGNORE_INDEX, 1, 2, IGNORE_INDEX, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 5, 6, 7, 0]])
    outputs = torch.nn.functional.one_hot(targets.clamp(min=0), 8).float()
    assert exact_match(outputs, targets, task, "logits").tolist() == [3, 3]
    outputs[0, 4] = torch.nn.functional.one_hot(torch.tensor(0), 8)  # a wrong token in row 0's second response
    outputs[1, 0] = torch.nn.functional.one_hot(torch.tensor(2), 8)  # a wrong guess where nothing counts
    assert exact_match(outputs, targets, task, "logits").tolist() == [2, 3]

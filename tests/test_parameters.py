"""Frozen parameters and optimizer parameter groups (issue 28): frozen weights end as they began and are in
no optimizer group, each group trains at its own learning rate (scaled by the scheduler), biases and
norms skip weight decay with optimizer.no_decay, a run with groups killed at a chosen step resumes bitwise
(1 process, and FSDP on 2), and bad patterns are one message each."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from accelerate.utils import set_seed
from safetensors.torch import load_file

import processes
import resuming
from conftest import REPO, assert_ok, checkpoint_dir, cli_env, describe, read_jsonl
from reliability_helpers import HEART, user_error
from trainwright.components import build_model
from trainwright.models.gpt import gpt
from trainwright.models.parameters import freeze, optimizer_groups
from trainwright.recipe import OptimizerConfig, load_recipe

FSDP_2PROC = REPO / "accelerate_configs" / "fsdp_cpu_2proc.yaml"
# 640 training points in batches of 64: 10 steps per epoch, 2 epochs; heart's MLP is 1: 2-72, 3: 72-36, 5: 36-1.
GROUPED = [
    "data.num_points=800", "trainer.epochs=2", "logging.wandb=false", "trainer.log_every_steps=1",
    "optimizer.name=adamw", "optimizer.momentum=null", "optimizer.lr=0.01", "optimizer.weight_decay=0.05",
    "optimizer.no_decay=true", "model.freeze=[1.weight]",
    "optimizer.groups=[{params: ['5.*'], lr: 0.1, name: head}]",
    "scheduler.name=cosine", "scheduler.warmup_steps=3", "checkpoint.every_steps=4",
]


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("grouped") / "run"
    result = processes.run([sys.executable, "-m", "trainwright", "train", HEART, *GROUPED, "--run-dir", run_dir],
                           cli_env())
    assert result.returncode == 0 and "Traceback" not in result.stderr, describe(result)
    return run_dir


def test_frozen_parameters_end_as_they_began_and_are_in_no_group(grouped_run):
    set_seed(0)  # as `train` seeds the model's initial weights
    initial = build_model(load_recipe(HEART, GROUPED)).state_dict()
    final = load_file(grouped_run / "model.safetensors")
    assert final["1.weight"].equal(initial["1.weight"])
    for name in ("1.bias", "3.weight", "5.weight"):
        assert not final[name].equal(initial[name]), f"{name} did not train"
    groups = json.loads((checkpoint_dir(grouped_run, 20) / "optimizer.json").read_text())["param_groups"]
    # 3.weight decays; 1.bias and 3.bias do not (1.weight is frozen: in no group); then 5.weight, 5.bias
    assert [(g["name"], g["params"], g["weight_decay"]) for g in groups] == [
        ("default", [0], 0.05), ("default.no_decay", [1, 2], 0.0), ("head", [3], 0.05), ("head.no_decay", [4], 0.0),
    ]


def test_each_group_trains_at_its_own_rate_under_the_schedule(grouped_run):
    logged = [row for row in read_jsonl(grouped_run / "metrics.jsonl") if "lr" in row]
    assert [row["step"] for row in logged] == list(range(1, 21))
    for row in logged:
        assert row["lr/head"] == pytest.approx(10 * row["lr"], rel=1e-9), row
    rates = [row["lr"] for row in logged]
    assert rates[0] < rates[2] and rates[2] > rates[-1], "the warm-up and cosine decay did not apply"
    groups = json.loads((checkpoint_dir(grouped_run, 20) / "optimizer.json").read_text())["param_groups"]
    assert [g["initial_lr"] for g in groups] == [0.01, 0.01, 0.1, 0.1]


def test_a_run_with_groups_killed_at_a_step_resumes_bitwise(grouped_run, tmp_path):
    run_dir = tmp_path / "run"
    resuming.kill_and_resume(8, ["train", HEART, *GROUPED, "--run-dir", run_dir], run_dir)
    resuming.assert_same_weights(run_dir, grouped_run)


@pytest.mark.slow
def test_fsdp_on_two_processes_with_a_frozen_weight_and_groups_resumes_bitwise(tmp_path):
    """1.weight frozen and 1.bias training share one FSDP unit (the Linear); the sharded optimizer file is
    keyed by name, its groups by parameter."""
    def args(run_dir: Path) -> list[object]:
        return ["train", HEART, *GROUPED, "--run-dir", run_dir]

    reference = assert_ok(resuming.run(args(tmp_path / "reference"),
                                       resuming.launcher(FSDP_2PROC, "--num_processes", 2)))
    assert "world_size=2 device=cpu precision=no strategy=fsdp" in reference.stdout
    resuming.kill_and_resume(8, args(tmp_path / "run"), tmp_path / "run",
                             resuming.launcher(FSDP_2PROC, "--num_processes", 2))
    resuming.assert_same_weights(tmp_path / "run", tmp_path / "reference")
    final = tmp_path / "run" / "model.safetensors"
    saved = json.loads((checkpoint_dir(tmp_path / "run", 20) / "optimizer.json").read_text())
    assert saved["param_groups.5.weight.name"] == "head" and saved["param_groups.1.bias.weight_decay"] == 0.0
    assert "param_groups.1.weight.name" not in saved  # frozen: in no group
    final = load_file(final)
    set_seed(0)
    assert final["1.weight"].equal(build_model(load_recipe(HEART, GROUPED)).state_dict()["1.weight"])


@pytest.mark.parametrize(("overrides", "fragments"), [
    (["model.freeze=[1.weigth]"], ("model.freeze: '1.weigth' matches no parameter", "did you mean '1.weight'?")),
    (["model.freeze=['*']"], ("model.freeze: every parameter of the model is frozen",)),
    (["optimizer.groups=[{params: ['1.*']}, {params: ['*.weight']}]"],
     ("optimizer.groups[1].params: '*.weight' matches 1.weight, which optimizer.groups[0] already holds",)),
    (["optimizer.groups=[{params: ['1.*'], lrr: 0.1}]"], ("optimizer.groups.0.lrr: unknown key; did you mean 'lr'?",)),
    (["optimizer.no_deacy=true"], ("optimizer.no_deacy: unknown argument", "did you mean 'no_decay'?")),
    (["optimizer.groups=[{params: ['5.*'], name: default}]"], ("group name 'default' is taken",)),
])
def test_bad_patterns_and_groups_are_one_message_before_anything_is_written(capsys, tmp_path, overrides, fragments):
    user_error(capsys, "train", HEART, "data.num_points=400", "logging.wandb=false", *overrides,
               "--run-dir", tmp_path / "run", fragments=fragments)
    assert not (tmp_path / "run").exists()


def test_a_tied_table_is_frozen_by_either_name_and_no_decay_spares_embeddings_and_norms():
    """The gpt model ties `head.weight` to `tokens.weight`: freezing the head freezes the shared table. With
    no_decay the embedding tables, norms and biases go to the no-decay part; the matrices of the blocks decay."""
    model = gpt(vocab_size=11, context=8, layers=1, heads=2, width=8)
    freeze(model, ["head.weight"])
    assert not model.tokens.weight.requires_grad and model.positions.weight.requires_grad
    names = {param: name for name, param in model.named_parameters()}
    config = OptimizerConfig(name="adamw", lr=0.1, no_decay=True)
    groups = {group["name"]: [names[p] for p in group["params"]] for group in optimizer_groups(config, model)}
    assert "tokens.weight" not in groups["default"] + groups["default.no_decay"]
    assert "positions.weight" in groups["default.no_decay"] and "norm.weight" in groups["default.no_decay"]
    assert "blocks.0.attention.proj.bias" in groups["default.no_decay"]
    assert groups["default"] == [name for name in names.values() if name.endswith("weight") and "norm" not in name
                                 and name not in ("tokens.weight", "positions.weight")]

"""`trainwright check` refuses what `train` refuses, with the same one message (issue 26, item 8), and the
recipe's numbers are bounded where NumPy and torch would otherwise fail with a traceback (item 6)."""

from __future__ import annotations

import pytest

from reliability_helpers import HEART, RECIPES, TINY, user_error

GPT = RECIPES / "tiny_gpt.yaml"

CASES = [
    (HEART, "model.hidden=[0]", "model.hidden: every layer needs at least 1 unit, got [0]"),
    (HEART, "model.activation=relux", "model.activation: unknown activation 'relux'; did you mean 'relu'?"),
    (HEART, "model.output_activation=sigmoidd", "model.output_activation: unknown activation 'sigmoidd'"),
    (HEART, "model.out_features=0", "model.out_features must be at least 1, got 0"),
    (HEART, "data.val_fraction=1.0", "data.val_fraction must be between 0 and 1"),
    (HEART, "data.num_points=1", "data.num_points must be at least 2, got 1"),
    (HEART, "seed=-1", "seed: Input should be greater than or equal to 0"),
    (HEART, "seed=4294967296", "seed: Input should be less than or equal to 4294967295"),
    (HEART, "optimizer.lr=.inf", "optimizer.lr: Input should be a finite number"),
    (HEART, "trainer.grad_clip=.nan", "trainer.grad_clip: Input should be a finite number"),
    (HEART, "optimizer.momentum=-1", "optimizer: cannot build optimizer 'sgd' from {'momentum': -1}"),
    (GPT, "scheduler.warmup_steps=-1", "scheduler: cannot build LR scheduler 'cosine' from {'warmup_steps': -1}"),
    (GPT, "model.heads=5", "model.width (96) must be a multiple of model.heads (5)"),
    (GPT, "data.context=0", "data.context must be at least 1, got 0"),
]


@pytest.mark.parametrize(("recipe", "override", "fragment"), CASES, ids=[case[1] for case in CASES])
@pytest.mark.parametrize("command", ["check", "train"])
def test_check_refuses_what_train_refuses(capsys, tmp_path, command, recipe, override, fragment):
    small = TINY if recipe == HEART else ["logging.wandb=false", "trainer.max_steps=1"]
    extra = [*small, "--run-dir", tmp_path / "run"] if command == "train" else []
    user_error(capsys, command, recipe, *extra, override, fragments=(fragment,))  # the override comes last
    assert not (tmp_path / "run").exists()

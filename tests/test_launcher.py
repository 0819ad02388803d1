"""Precision and strategy come from the recipe, or from the launcher where the recipe says auto; a
contradiction between explicit values is one clear error."""

from __future__ import annotations

import sys

import pytest

import processes
from conftest import RECIPES, assert_ok, assert_user_error, cli_env, describe, run_cli
from trainwright.distributed.launcher import resolve_precision, resolve_strategy
from trainwright.errors import UserError
from trainwright.recipe import load_recipe

HEART = RECIPES / "heart.yaml"
TINY = ["data.num_points=400", "trainer.max_steps=3", "logging.wandb=false"]


def _recipe(*overrides: str):
    return load_recipe(HEART, list(overrides))


@pytest.mark.parametrize(
    ("recipe_value", "launcher", "expected"),
    [("auto", None, "no"), ("auto", "no", "no"), ("auto", "bf16", "bf16"), ("bf16", None, "bf16"),
     ("bf16", "no", "bf16"), ("bf16", "bf16", "bf16"), ("no", None, "no"), ("fp16", "fp16", "fp16")],
)
def test_precision_follows_the_recipe_or_the_launcher(monkeypatch, recipe_value, launcher, expected):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    if launcher is not None:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    assert resolve_precision(_recipe(f"trainer.mixed_precision={recipe_value}")) == expected


@pytest.mark.parametrize(("recipe_value", "launcher"), [("bf16", "fp16"), ("no", "bf16"), ("fp16", "bf16")])
def test_explicit_precisions_that_disagree_are_refused(monkeypatch, recipe_value, launcher):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    with pytest.raises(UserError, match=f"trainer.mixed_precision={recipe_value} contradicts .*'{launcher}'"):
        resolve_precision(_recipe(f"trainer.mixed_precision={recipe_value}"))


def test_a_launcher_precision_trainwright_cannot_train_in_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(UserError, match="'fp8'"):
        resolve_precision(_recipe())


def test_strategy_follows_an_fsdp_launcher_config(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert resolve_strategy(_recipe()) == "ddp"
    assert resolve_strategy(_recipe("distributed.strategy=fsdp")) == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert resolve_strategy(_recipe()) == "fsdp"
    with pytest.raises(UserError, match="distributed.strategy=ddp contradicts the launcher"):
        resolve_strategy(_recipe("distributed.strategy=ddp"))


def test_yaml_no_is_the_precision_no():
    assert _recipe("trainer.mixed_precision=no").trainer.mixed_precision == "no"


def _launch(*args: object, precision: str | None = None):
    """`accelerate launch` with the one-process CPU config (and --mixed_precision when given)."""

    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(RECIPES.parent / "accelerate_configs" / "cpu_1proc.yaml"),
    ]
    if precision:
        launcher += ["--mixed_precision", precision]
    return processes.run([*launcher, "-m", "trainwright", *args], cli_env(), cwd=RECIPES.parent, timeout=300)


def test_accelerate_launch_mixed_precision_reaches_a_recipe_without_one(tmp_path):
    result = assert_ok(_launch("train", HEART, *TINY, "--run-dir", tmp_path / "run", precision="bf16"))
    assert "world_size=1 device=cpu precision=bf16 strategy=ddp" in result.stdout, describe(result)
    contradiction = _launch("train", HEART, *TINY, "trainer.mixed_precision=no", "--run-dir", tmp_path / "other",
                            precision="bf16")
    # the launcher turns the trainer's exit code 2 into its own 1 and adds its traceback (issue 8)
    assert contradiction.returncode != 0
    assert contradiction.stderr.count("trainwright: error: trainer.mixed_precision=no contradicts") == 1
    assert not (tmp_path / "other").exists()


def test_resuming_in_another_precision_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    assert_ok(run_cli("train", HEART, *TINY, "--run-dir", run_dir))
    bf16 = run_cli("train", HEART, *TINY[:-2], "trainer.max_steps=5", "logging.wandb=false", "--run-dir", run_dir,
                   env=cli_env(ACCELERATE_MIXED_PRECISION="bf16"))
    assert_user_error(bf16.returncode, bf16.stderr, "trained with mixed precision 'no'", "'bf16'")

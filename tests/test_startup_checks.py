"""Everything that can be checked before training is checked before any folder is made: values that
would fail only once training starts, the loss against the model's output and the task, and
checkpoint.monitor."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import RECIPES, write_fashion_mnist
from reliability_helpers import HEART, HOUSE, TINY, user_error


def refused_without_a_folder(capsys, tmp_path: Path, recipe: Path, *overrides: str, fragments: tuple[str, ...]) -> str:
    message = user_error(capsys, "train", recipe, *overrides, "--run-dir", tmp_path / "run", fragments=fragments)
    assert not (tmp_path / "run").exists()
    return message


# --- values that would fail only once training starts --------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [(["scheduler.name=step", "scheduler.step_size=0"], ("scheduler", "step_size", "ZeroDivisionError")),
     (["model.hidden=[-1]"], ("model.hidden", "at least 1 unit", "got [-1]")),
     (["data.seed=abc"], ("data.seed",))],
)
def test_values_failing_at_the_first_step_are_one_message_and_no_folder(capsys, tmp_path, overrides, fragments):
    refused_without_a_folder(capsys, tmp_path, HEART, *TINY, *overrides, fragments=fragments)


# --- the loss, the model's output and the task ---------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [(["loss.name=cross_entropy"], ("cross_entropy", "binary", "bce_with_logits")),
     (["model.in_features=3"], ("(64, 2)", "model.in_features")),
     (["model.out_features=2"], ("(64, 2)", "model.out_features=1")),
     (["model.output_activation=null"], ("loss.name=bce", "probabilities", "bce_with_logits")),
     (["loss.name=mse"], ("regression loss", "binary"))],
)
def test_a_loss_or_model_that_cannot_fit_heart_is_refused(capsys, tmp_path, overrides, fragments):
    refused_without_a_folder(capsys, tmp_path, HEART, *TINY, *overrides, fragments=fragments)


def test_bce_on_regression_is_refused(capsys, tmp_path):
    refused_without_a_folder(capsys, tmp_path, HOUSE, "logging.wandb=false", "loss.name=bce",
                             fragments=("classification loss", "regression", "mse"))


def test_lenet_with_too_few_classes_is_refused(capsys, tmp_path):
    root = tmp_path / "data"
    write_fashion_mnist(root)
    user_error(capsys, "train", RECIPES / "fashion_mnist_lenet.yaml", f"data.root={root}", "logging.wandb=false",
               "model.num_classes=5", "--run-dir", tmp_path / "run", fragments=("10 classes", "model.num_classes=10"))
    assert not (tmp_path / "run").exists()


# --- checkpoint.monitor ----------------------------------------------------------------------------


def test_a_misspelt_monitor_is_refused_by_check_and_train(capsys, tmp_path):
    overrides = ["checkpoint.monitor=val/acuracy", "checkpoint.keep_best=1"]
    user_error(capsys, "check", HEART, *overrides, fragments=("checkpoint.monitor", "did you mean 'val/accuracy'"))
    refused_without_a_folder(capsys, tmp_path, HEART, *TINY, *overrides, fragments=("did you mean 'val/accuracy'",))


def test_a_monitor_the_task_does_not_report_is_refused_at_start(capsys, tmp_path):
    """val/mae is a valid name for `check` (the task is unknown there), but heart reports accuracy."""
    refused_without_a_folder(capsys, tmp_path, HEART, *TINY, "checkpoint.monitor=val/mae",
                             fragments=("no 'val/mae'", "val/accuracy"))


def test_a_forward_pass_that_fails_for_another_reason_is_not_blamed_on_the_vocabulary(capsys, tmp_path, monkeypatch):
    """gpt with loss.name=model is called as model(inputs, targets), which its forward does not take: said so,
    not 'set model.vocab_size' (the vocabulary fits); ids past the vocabulary still get that hint."""
    monkeypatch.setenv("TRAINWRIGHT_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 100)
    gpt = [RECIPES / "tiny_gpt.yaml", f"data.path={corpus}", "logging.wandb=false", "data.batch_size=8",
           "--run-dir", tmp_path / "run"]
    message = user_error(capsys, "train", *gpt, "loss.name=model", fragments=(
        "TypeError: GPT.forward() takes 2 positional arguments but 3 were given",
        "with loss.name=model a batch of (inputs, targets) is given as model(inputs, targets)"))
    assert "vocab" not in message
    user_error(capsys, "train", *gpt, "model.vocab_size=10", fragments=(
        "IndexError", "check the model's vocabulary: data set 'text' has 28 tokens (set model.vocab_size=28)"))

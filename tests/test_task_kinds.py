"""Task kinds in one place (data/tasks.py): each kind is one entry there, and the kind for models that
compute their own loss (scored_by_model) trains, evaluates and refuses what has no meaning for it."""

from __future__ import annotations

import json
from typing import get_args

import pytest
import torch

from conftest import assert_ok, assert_user_error, cli_env_with_tests, run_cli
from trainwright.data.bundle import Task, TaskKind
from trainwright.data.tasks import KINDS, all_default_metrics, kind_of

RECIPE = (
    "name: scored\ndata: {name: 'model_scored:points', batch_size: 32}\nmodel: {name: 'model_scored:denoiser'}\n"
    "loss: {name: model}\noptimizer: {name: sgd, lr: 0.1}\ntrainer: {epochs: 2}\nlogging: {wandb: false}\n"
)


def test_every_kind_a_task_may_name_is_one_entry_of_the_table():
    assert set(get_args(TaskKind)) == set(KINDS)
    assert all(kind.name == name for name, kind in KINDS.items())
    assert all_default_metrics() == ["accuracy", "mae", "perplexity"]  # what `check` accepts before the data


@pytest.mark.parametrize(("kind", "outputs", "labels"), [
    ("binary", torch.tensor([[2.0], [-2.0]]), [1, 0]),
    ("multiclass", torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]]), [1, 0]),
])
def test_a_classifier_kind_reads_its_outputs_as_labels_and_probability_columns(kind, outputs, labels):
    rules = kind_of(Task(kind))
    assert rules.predicted_labels(outputs, "logits").tolist() == labels
    columns = rules.probability_columns(outputs, "logits")
    assert columns.shape == (2, outputs.shape[1] if kind == "multiclass" else 2)
    assert torch.allclose(columns.sum(dim=1), torch.ones(2))


def test_a_task_scored_by_its_model_trains_reports_its_loss_alone_and_refuses_predict(tmp_path):
    recipe = tmp_path / "scored.yaml"
    recipe.write_text(RECIPE)
    run_dir = tmp_path / "run"
    assert_ok(run_cli("train", recipe, "--run-dir", run_dir, env=cli_env_with_tests()))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and "val/loss" in summary
    assert not [key for key in summary if key.startswith("val/") and key != "val/loss"]  # no metric by default
    evaluated = assert_ok(run_cli("eval", run_dir, env=cli_env_with_tests()))
    assert "val/loss" in evaluated.stdout
    assert_ok(run_cli("plot", run_dir, env=cli_env_with_tests()))  # the loss curves alone
    assert not (run_dir / "plots" / "predictions.png").exists()
    refused = run_cli("predict", run_dir, env=cli_env_with_tests())
    assert_user_error(refused.returncode, refused.stderr, "scored_by_model run", "trainwright eval RUN")


def test_a_task_scored_by_its_model_refuses_a_loss_of_its_own_at_start_up(tmp_path):
    recipe = tmp_path / "scored.yaml"
    recipe.write_text(RECIPE.replace("loss: {name: model}", "loss: {name: mse}").replace(
        "model: {name: 'model_scored:denoiser'}", "model: {name: mlp, in_features: 2, hidden: [4], out_features: 2}"))
    result = run_cli("train", recipe, "--run-dir", tmp_path / "run", env=cli_env_with_tests())
    assert_user_error(result.returncode, result.stderr, "loss.name=mse", "scored_by_model", "loss.name=model")
    assert not (tmp_path / "run" / "checkpoints").exists()

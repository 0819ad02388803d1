"""torchmetrics' classifier metrics by name (f1, precision, recall, auroc): a heart run validated on 2
processes and scored by `eval` on 1 and 3 processes reports the values scikit-learn computes from the run's
predictions over the whole split (the states of the processes are merged, not their values averaged), and
`plot` draws its confusion matrix; a multiclass split gives scikit-learn's macro averages; wrong names and
tasks are refused."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score
from torch import nn

from conftest import REPO, assert_ok, cli_env, read_jsonl
from processes import free_port, run
from reliability_helpers import HEART, call, user_error
from trainwright.components import METRICS
from trainwright.data.bundle import Task, TensorSplit
from trainwright.distributed.processes import Processes
from trainwright.finished.inference import load_run
from trainwright.finished.plots import confusion_counts
from trainwright.run.directory import RunDir
from trainwright.step import DefaultStep
from trainwright.training.evaluation import Scoring, evaluate

NAMES = ["f1", "auroc", "precision", "recall"]


def _launch(config: str, processes: int, *args: object) -> str:
    """`trainwright ARGS` on `processes` CPU processes; its stdout (which names the world size when training)."""
    return assert_ok(run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                          REPO / "accelerate_configs" / config, "--num_processes", str(processes),
                          "--main_process_port", str(free_port()), "-m", "trainwright", *args], cli_env())).stdout


def _sklearn(probabilities: torch.Tensor, actual: torch.Tensor) -> dict[str, float]:
    """scikit-learn's values; binary: of class 1 at 0.5, multiclass: macro averages (AUROC: one vs rest)."""
    labels, actual = probabilities.argmax(dim=1).numpy(), actual.numpy()
    if probabilities.shape[1] == 2:
        average, scores = "binary", probabilities[:, 1].numpy()
        labels = (probabilities[:, 1] > 0.5).long().numpy()  # as `predict` labels a binary item
    else:
        average, scores = "macro", probabilities.numpy()
    return {
        "f1": f1_score(actual, labels, average=average),
        "precision": precision_score(actual, labels, average=average),
        "recall": recall_score(actual, labels, average=average),
        "auroc": roc_auc_score(actual, scores, multi_class="ovr", average="macro"),
    }


@pytest.mark.slow
def test_heart_on_one_two_and_three_processes_matches_scikit_learn(tmp_path, capsys):
    run_dir = tmp_path / "run"
    out = _launch("cpu_2proc.yaml", 2, "train", HEART, "data.num_points=600", "data.batch_size=16", "trainer.epochs=2",
                  "optimizer.lr=0.1", "logging.wandb=false", "metrics=[accuracy, f1, auroc, precision, recall]",
                  "checkpoint.monitor=val/f1", "checkpoint.mode=max", "checkpoint.keep_best=1",
                  "trainer.early_stopping={monitor: val/auroc, mode: max, patience: 5}", "--run-dir", run_dir)
    assert "world_size=2" in out, out
    validated = [row for row in read_jsonl(run_dir / "metrics.jsonl") if "val/f1" in row][-1]
    _, predictions = load_run(RunDir(run_dir)).predict_split()
    expected = _sklearn(predictions.probabilities, predictions.actual.reshape(-1).long())
    assert 0.3 < expected["f1"] < 1 and 0.5 < expected["auroc"] < 1  # a model that learned something, not all
    code, single, err = call(capsys, "eval", run_dir)
    assert code == 0, err
    one = json.loads(single)
    three = json.loads(_launch("cpu_2proc.yaml", 3, "eval", run_dir))
    for name in NAMES:
        assert one[f"val/{name}"] == three[f"val/{name}"] == validated[f"val/{name}"], name  # exact
        assert one[f"val/{name}"] == pytest.approx(expected[name], abs=1e-6), name
    assert json.loads((run_dir / "checkpoints" / "best.json").read_text())["val/f1"] == validated["val/f1"]
    code, out, err = call(capsys, "plot", run_dir)
    assert code == 0, err
    assert str(run_dir / "plots" / "confusion_matrix.png") in out.split()
    assert (run_dir / "plots" / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")
    assert confusion_counts(predictions).tolist() == confusion_matrix(predictions.actual.reshape(-1).long(),
                                                                      predictions.label_indices).tolist()


def test_multiclass_gives_scikit_learns_macro_averages():
    torch.manual_seed(0)
    inputs, targets = torch.randn(300, 4), torch.randint(0, 3, (300,))
    inputs[:, 0] += targets  # a model that is right more often than not
    task, loss = Task("multiclass", ("a", "b", "c")), nn.CrossEntropyLoss()
    scoring = Scoring(loss_fn=loss, task=task, output_kind="logits", metrics={}, step=DefaultStep(loss, task),
                      states={name: METRICS.get(name) for name in NAMES})
    model = nn.Linear(4, 3)
    got = evaluate(model, TensorSplit(inputs, targets), scoring, Processes.single(), batch_size=64)
    expected = _sklearn(torch.softmax(model(inputs), dim=1).detach(), targets)
    for name in NAMES:
        assert got[name] == pytest.approx(expected[name], abs=1e-6), name


def test_a_misspelt_metric_or_one_for_another_task_is_refused(capsys):
    message = user_error(capsys, "check", HEART, "metrics=[precison]",
                         fragments=("metrics: unknown metric 'precison'",))
    assert "did you mean 'precision'" in message
    user_error(capsys, "train", REPO / "recipes" / "linear_regression.yaml", "metrics=[mae, auroc]",
               "logging.wandb=false", "--run-dir", "/nonexistent/never-made",
               fragments=("'auroc' is a classifier metric", "regression"))


def test_without_torchmetrics_the_message_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # import torchmetrics raises ImportError
    monkeypatch.setitem(sys.modules, "torchmetrics.classification", None)
    user_error(capsys, "check", HEART, "metrics=[accuracy, f1]", fragments=("pip install 'trainwright[metrics]'",))

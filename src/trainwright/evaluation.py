"""Turning model outputs into predictions and metrics (loss; accuracy for classifiers; MAE for regression)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from trainwright.data.bundle import Task
from trainwright.data.loading import eval_indices, iterate

EVAL_BATCH_SIZE = 1024  # evaluation keeps no activations for backward, so it takes larger batches


def probabilities(outputs: torch.Tensor, task: Task, output_kind: str) -> torch.Tensor:
    """Binary: P(class 1) per item; multiclass: class probabilities per item."""
    if output_kind == "probability":
        return outputs
    if task.kind == "binary":
        return torch.sigmoid(outputs)
    return torch.softmax(outputs, dim=-1)


def predicted_labels(outputs: torch.Tensor, task: Task, output_kind: str) -> torch.Tensor:
    """Class index per item for classifiers."""
    probs = probabilities(outputs, task, output_kind)
    if task.kind == "binary":
        return (probs.reshape(len(probs), -1)[:, 0] > 0.5).long()
    return probs.argmax(dim=-1)


def _batch_sums(outputs: torch.Tensor, targets: torch.Tensor, task: Task, output_kind: str) -> torch.Tensor:
    """(sum of correct predictions | sum of absolute errors in data units) for one batch."""
    if task.kind == "regression":
        return (task.decode(outputs) - task.decode(targets)).abs().sum()
    truth = targets.reshape(-1).long() if task.kind == "binary" else targets
    return (predicted_labels(outputs, task, output_kind) == truth).sum()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    loss_fn: nn.Module,
    task: Task,
    output_kind: str,
    device: torch.device,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> dict[str, float]:
    """Loss and accuracy/MAE over the whole split; each process takes its share and the sums are reduced."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct or abs-error sum, count
    for inputs, targets in iterate(dataset, eval_indices(len(dataset), batch_size, rank, world_size)):
        inputs, targets = inputs.to(device), targets.to(device)
        outputs = model(inputs).float()
        count = len(targets)
        totals[0] += loss_fn(outputs, targets).double() * count
        totals[1] += _batch_sums(outputs, targets, task, output_kind).double()
        totals[2] += count
    model.train(was_training)
    loss_sum, metric_sum, count = reduce_sum(totals).tolist()
    metrics = {"loss": loss_sum / count}
    metrics["mae" if task.kind == "regression" else "accuracy"] = metric_sum / count
    return metrics

"""Built-in metrics. A metric maps one batch to the SUM of a per-item score, so sums from several
processes and batches add up exactly; the reported value is that sum over the number of items.

A metric of your own: `fn(outputs, targets, task, output_kind) -> 0-d tensor`, named in the recipe as
`metrics: [my_pkg.metrics:fn]`."""

from __future__ import annotations

import torch

from trainwright.data.bundle import Task
from trainwright.predictions import predicted_labels
from trainwright.registry import METRICS


@METRICS.register("accuracy")
def accuracy(outputs: torch.Tensor, targets: torch.Tensor, task: Task, output_kind: str) -> torch.Tensor:
    """Correct predictions (classifiers)."""
    truth = targets.reshape(-1).long() if task.kind == "binary" else targets
    return (predicted_labels(outputs, task, output_kind) == truth).sum()


@METRICS.register("mae")
def mae(outputs: torch.Tensor, targets: torch.Tensor, task: Task, output_kind: str) -> torch.Tensor:
    """Absolute errors in the target's own units (regression; in float64, as large units overflow float32)."""
    return (task.decode(outputs.double()) - task.decode(targets.double())).abs().sum()


@METRICS.register("mse")
def mse(outputs: torch.Tensor, targets: torch.Tensor, task: Task, output_kind: str) -> torch.Tensor:
    """Squared errors in the target's own units (regression; in float64, as large units overflow float32)."""
    return ((task.decode(outputs.double()) - task.decode(targets.double())) ** 2).sum()


def default_metrics(task: Task) -> list[str]:
    return ["mae"] if task.kind == "regression" else ["accuracy"]

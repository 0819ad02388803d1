"""Classifier metrics from torchmetrics (the optional extra: pip install 'trainwright[metrics]'): `f1`,
`precision`, `recall` and `auroc`. Binary tasks: of class 1 (at probability 0.5, as `predict` labels);
multiclass: the macro average over the classes the model outputs (AUROC: one class against the rest).

These are not means of per-item scores (metrics.py): each process keeps a torchmetrics metric's state over
its share of the split, and evaluation merges every process's state (in rank order) before computing, so
the value is the one over the whole split whatever the number of processes. torchmetrics is imported only
when a recipe names one of them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from trainwright.data.bundle import Task
from trainwright.data.tasks import kind_of, probabilities
from trainwright.errors import UserError

if TYPE_CHECKING:
    from torchmetrics import Metric

EXTRA = "pip install 'trainwright[metrics]'"
_CLASSES = {"f1": "F1Score", "precision": "Precision", "recall": "Recall", "auroc": "AUROC"}
NAMES = tuple(_CLASSES)


def require_torchmetrics(name: str) -> Any:
    """The torchmetrics module; a UserError naming the metric and the extra when it is not installed."""
    try:
        import torchmetrics.classification
    except ImportError:
        raise UserError(f"metrics: '{name}' needs torchmetrics, which is not installed: {EXTRA}") from None
    return torchmetrics.classification


def check_task(name: str, task: Task) -> None:
    if not kind_of(task).classifier:
        raise UserError(
            f"metrics: '{name}' is a classifier metric, but this run's task is {task.kind}; "
            f"remove it (classifier metrics: {', '.join(NAMES)})"
        )


def build(name: str, task: Task, num_classes: int) -> Metric:
    """The torchmetrics metric `name` for `task` (multiclass: over `num_classes`, macro-averaged)."""
    check_task(name, task)
    classification = require_torchmetrics(name)
    if kind_of(task).single_output:
        return getattr(classification, f"Binary{_CLASSES[name]}")()
    return getattr(classification, f"Multiclass{_CLASSES[name]}")(num_classes=num_classes, average="macro")


def inputs(outputs: torch.Tensor, targets: torch.Tensor, task: Task, output_kind: str) -> tuple[torch.Tensor, ...]:
    """(probabilities, class indices) as torchmetrics reads them: binary, P(class 1) per item; multiclass,
    one column per class."""
    return kind_of(task).metric_inputs(probabilities(outputs.float(), task, output_kind)), targets.reshape(-1).long()


def merged(parts: list[Metric]) -> float:
    """The value over every process's share: the states of `parts` (one per process) merged, then computed."""
    first, *others = parts
    for other in others:
        first.merge_state(other)
    return float(first.compute())

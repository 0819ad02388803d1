"""Validation and test metrics over a whole split: the loss plus the recipe's metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from trainwright.data.bundle import Task
from trainwright.data.loading import eval_indices, iterate
from trainwright.processes import Processes

EVAL_BATCH_SIZE = 1024  # evaluation keeps no activations for backward, so it takes larger batches

# fn(outputs, targets, task, output_kind) -> the batch's SUM of a per-item score (a 0-d tensor)
MetricFn = Callable[[torch.Tensor, torch.Tensor, Task, str], torch.Tensor]


@dataclass(frozen=True)
class Scoring:
    """How a model's outputs are scored: the loss, and metrics reported under their names, reading the
    outputs as `output_kind` ('probability', 'logits' or 'value') for `task`."""

    loss_fn: nn.Module
    task: Task
    output_kind: str
    metrics: dict[str, MetricFn]


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, scoring: Scoring, processes: Processes, batch_size: int = EVAL_BATCH_SIZE
) -> dict[str, float]:
    """Loss and metrics over the whole split; each process takes its share and the sums are reduced."""
    was_training = model.training
    model.eval()
    device = processes.device
    totals = torch.zeros(2 + len(scoring.metrics), dtype=torch.float64, device=device)  # count, loss, metrics
    batches = eval_indices(len(dataset), batch_size, processes.rank, processes.world_size)
    for (inputs, targets), counted in zip(iterate(dataset, (index for index, _ in batches)), (n for _, n in batches)):
        outputs = model(inputs.to(device)).float()
        if not counted:  # a filler batch, run only so that every process takes part in each forward
            continue
        targets = targets.to(device)
        totals[0] += len(targets)
        totals[1] += scoring.loss_fn(outputs, targets).double() * len(targets)
        for i, metric in enumerate(scoring.metrics.values(), start=2):
            totals[i] += metric(outputs, targets, scoring.task, scoring.output_kind).double()
    model.train(was_training)
    count, *sums = processes.sum(totals).tolist()
    return {name: total / count for name, total in zip(["loss", *scoring.metrics], sums)}

"""Validation and test metrics over a whole split: the loss plus the recipe's metrics."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from trainwright.data.bundle import Task
from trainwright.data.loading import eval_indices, iterate
from trainwright.registry import METRICS

EVAL_BATCH_SIZE = 1024  # evaluation keeps no activations for backward, so it takes larger batches


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    loss_fn: nn.Module,
    task: Task,
    output_kind: str,
    metric_names: list[str],
    device: torch.device,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> dict[str, float]:
    """Loss and metrics over the whole split; each process takes its share and the sums are reduced."""
    metric_fns = [METRICS.get(name, key="metrics") for name in metric_names]
    was_training = model.training
    model.eval()
    totals = torch.zeros(2 + len(metric_fns), dtype=torch.float64, device=device)  # count, loss sum, metric sums
    for inputs, targets in iterate(dataset, eval_indices(len(dataset), batch_size, rank, world_size)):
        inputs, targets = inputs.to(device), targets.to(device)
        outputs = model(inputs).float()
        totals[0] += len(targets)
        totals[1] += loss_fn(outputs, targets).double() * len(targets)
        for i, metric in enumerate(metric_fns, start=2):
            totals[i] += metric(outputs, targets, task, output_kind).double()
    model.train(was_training)
    count, *sums = reduce_sum(totals).tolist()
    names = ["loss", *(name.rpartition(":")[2] for name in metric_names)]  # 'pkg.mod:f1' is reported as 'f1'
    return {name: total / count for name, total in zip(names, sums)}

"""Validation and test metrics over a whole split: the loss plus the recipe's metrics."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import Dataset

from trainwright.data.bundle import Task, split_size
from trainwright.data.loading import eval_indices, iterate, peek
from trainwright.data.tasks import Kind, kind_of
from trainwright.distributed.processes import Processes
from trainwright.models import classifier_metrics
from trainwright.step import Scored, Step

if TYPE_CHECKING:
    from torchmetrics import Metric

EVAL_BATCH_SIZE = 1024  # evaluation keeps no activations for backward, so it takes larger batches

# fn(outputs, targets, task, output_kind) -> the batch's SUM of a per-item score (per-token for sequence tasks),
# or (sum, count) as a tensor of two numbers for a mean over what the metric counts itself
MetricFn = Callable[[torch.Tensor, torch.Tensor, Task, str], torch.Tensor]
# fn(task, number of the model's outputs per item) -> a torchmetrics metric (classifier_metrics.py)
StateMetricFn = Callable[[Task, int], "Metric"]


@dataclass(frozen=True)
class Scoring:
    """How a model's outputs are scored: the loss, and metrics reported under their names, reading the
    outputs as `output_kind` ('probability', 'logits' or 'value') for `task`. A metric's reported value is
    its sum over the count of items (tokens, for sequence tasks), mapped by its `finish` where it has one
    (perplexity: exp of the mean token loss). The `states` metrics (torchmetrics') keep a state over the
    split instead, merged over the processes before they are computed."""

    loss_fn: nn.Module
    task: Task
    output_kind: str
    metrics: dict[str, MetricFn]
    step: Step  # how batches go through the model and are scored (built once, by components.build_scoring)
    finish: dict[str, Callable[[float], float]] = field(default_factory=dict)
    states: dict[str, StateMetricFn] = field(default_factory=dict)

    @property
    def kind(self) -> Kind:
        """What the task's kind says the outputs mean (data/tasks.py)."""
        return kind_of(self.task)

    @property
    def names(self) -> list[str]:
        """Every metric the scoring reports, besides the loss."""
        return [*self.metrics, *self.states]

    def loss_sum(self, loss: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | int]:
        """A batch's mean loss as (sum, count) over what it is the mean of: its items, or for sequence
        tasks its tokens not ignored (a batch of padding alone, whose mean is NaN, adds nothing)."""
        if not self.kind.per_position:
            return loss.double() * len(targets), len(targets)
        count = self.task.counted(targets).sum()
        return torch.where(count > 0, loss.double() * count, 0.0), count


def _metric_inputs(scored: Scored) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs and targets that metrics read; a batch scored without either cannot feed metrics."""
    if scored.outputs is None or scored.targets is None:
        raise ValueError("metrics need the model's outputs and the batch's targets; this batch has not both")
    return scored.outputs, scored.targets


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, scoring: Scoring, processes: Processes, batch_size: int = EVAL_BATCH_SIZE
) -> dict[str, float]:
    """Loss and metrics over the whole split; each process takes its share and the sums (and counts) are reduced."""
    was_training = model.training
    model.eval()
    device = processes.device
    totals = torch.zeros(2 + len(scoring.metrics), dtype=torch.float64, device=device)  # count, loss, metrics
    counts = torch.zeros(len(scoring.metrics), dtype=torch.float64, device=device)  # what each metric is a mean of
    batches = eval_indices(split_size(dataset), batch_size, processes.rank, processes.world_size)
    first, served = peek(iterate(dataset, (index for index, _ in batches)))
    score = scoring.step.scorer(model, first, device) if first is not None else None
    states: dict[str, Metric] = {}
    for batch, counted in zip(served, (n for _, n in batches)):
        assert score is not None  # (built from the first batch)
        scored = score(batch)
        if scoring.states and not states:  # from the first batch (a filler's too: every process has one to merge)
            outputs, _ = _metric_inputs(scored)
            states = {name: make(scoring.task, outputs.shape[-1]).to(device) for name, make in scoring.states.items()}
        if not counted:  # a filler batch, run only so that every process takes part in each forward
            continue
        items: torch.Tensor | int
        if scored.targets is None:  # a model scoring itself on batches without targets: a mean over items
            loss_sum, items = scored.loss.double() * counted, counted
        else:
            loss_sum, items = scoring.loss_sum(scored.loss, scored.targets)
        totals[0] += items
        totals[1] += loss_sum
        if scoring.metrics or states:
            outputs, targets = _metric_inputs(scored)
            for i, metric in enumerate(scoring.metrics.values()):
                value = metric(outputs, targets, scoring.task, scoring.output_kind).double()
                total, number = (value[0], value[1]) if value.ndim else (value, items)  # (sum, count): its own count
                totals[i + 2] += total
                counts[i] += number
            for state in states.values():
                state.update(*classifier_metrics.inputs(outputs, targets, scoring.task, scoring.output_kind))
    model.train(was_training)
    reduced = processes.sum(torch.cat([totals, counts])).tolist()
    count, *sums = reduced[: len(totals)]
    numbers = [count, *reduced[len(totals):]]
    means = {name: total / number if number else math.nan
             for name, total, number in zip(["loss", *scoring.metrics], sums, numbers)}
    results = {name: scoring.finish[name](mean) if name in scoring.finish else mean for name, mean in means.items()}
    if scoring.states:  # every process's state, gathered in rank order, merged (exact: counts add, scores join)
        parts = processes.gather({name: state.cpu() for name, state in states.items()})
        results.update({name: classifier_metrics.merged([part[name] for part in parts]) for name in scoring.states})
    return results

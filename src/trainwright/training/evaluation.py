"""Validation and test metrics over a whole split: the loss plus the recipe's metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import Dataset

from trainwright.data.bundle import Task
from trainwright.data.loading import eval_indices, iterate, peek
from trainwright.data.tasks import Kind, kind_of
from trainwright.distributed.processes import Processes
from trainwright.models import classifier_metrics
from trainwright.step import Step

if TYPE_CHECKING:
    from torchmetrics import Metric

EVAL_BATCH_SIZE = 1024  # evaluation keeps no activations for backward, so it takes larger batches

# fn(outputs, targets, task, output_kind) -> the batch's SUM of a per-item score (per-token for sequence tasks)
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


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, scoring: Scoring, processes: Processes, batch_size: int = EVAL_BATCH_SIZE
) -> dict[str, float]:
    """Loss and metrics over the whole split; each process takes its share and the sums (and counts) are reduced."""
    was_training = model.training
    model.eval()
    device = processes.device
    totals = torch.zeros(2 + len(scoring.metrics), dtype=torch.float64, device=device)  # count, loss, metrics
    batches = eval_indices(len(dataset), batch_size, processes.rank, processes.world_size)
    first, served = peek(iterate(dataset, (index for index, _ in batches)))
    score = scoring.step.scorer(model, first, device) if first is not None else None
    states: dict[str, Metric] = {}
    for batch, counted in zip(served, (n for _, n in batches)):
        scored = score(batch)
        if scoring.states and not states:  # from the first batch (a filler's too: every process has one to merge)
            states = {name: make(scoring.task, scored.outputs.shape[-1]).to(device)
                      for name, make in scoring.states.items()}
        if not counted:  # a filler batch, run only so that every process takes part in each forward
            continue
        if scored.targets is None:  # a model scoring itself on batches without targets: a mean over items
            loss_sum, count = scored.loss.double() * counted, counted
        else:
            loss_sum, count = scoring.loss_sum(scored.loss, scored.targets)
        totals[0] += count
        totals[1] += loss_sum
        for i, metric in enumerate(scoring.metrics.values(), start=2):
            totals[i] += metric(scored.outputs, scored.targets, scoring.task, scoring.output_kind).double()
        for state in states.values():
            state.update(*classifier_metrics.inputs(scored.outputs, scored.targets, scoring.task, scoring.output_kind))
    model.train(was_training)
    count, *sums = processes.sum(totals).tolist()
    means = {name: total / count for name, total in zip(["loss", *scoring.metrics], sums)}
    results = {name: scoring.finish[name](mean) if name in scoring.finish else mean for name, mean in means.items()}
    if scoring.states:  # every process's state, gathered in rank order, merged (exact: counts add, scores join)
        parts = processes.gather({name: state.cpu() for name, state in states.items()})
        results.update({name: classifier_metrics.merged([part[name] for part in parts]) for name in scoring.states})
    return results

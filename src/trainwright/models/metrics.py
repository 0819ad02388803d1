"""Built-in metrics. A metric maps one batch to the SUM of a per-item score, so sums from several
processes and batches add up exactly; the reported value is that sum over the number of items (for
sequence tasks: over the tokens not ignored), mapped by the metric's `finish` where it is registered
with one (perplexity: the exponential of the mean token loss).

A metric of your own: `fn(outputs, targets, task, output_kind) -> 0-d tensor`, named in the recipe as
`metrics: [my_pkg.metrics:fn]`. A metric that is not a mean over the items (or tokens) returns
`(sum, count)` instead, a tensor of two numbers (`exact_match`: responses right, responses).

Beside them, `f1`, `precision`, `recall` and `auroc` for classifiers come from torchmetrics (registered with
`state=True`: see classifier_metrics.py), exact over processes by merging their states."""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F

from trainwright.data.bundle import Task
from trainwright.data.tasks import kind_of
from trainwright.errors import UserError
from trainwright.models import classifier_metrics
from trainwright.registry import METRICS


@METRICS.register("accuracy")
def accuracy(outputs: torch.Tensor, targets: torch.Tensor, task: Task, output_kind: str) -> torch.Tensor:
    """Correct predictions (classifiers; sequence tasks: correct tokens, padding not counted)."""
    kind = kind_of(task)
    correct = kind.predicted_labels(outputs, output_kind) == kind.label_targets(targets)
    return (correct & task.counted(targets)).sum() if kind.per_position else correct.sum()


@METRICS.register("perplexity", finish=math.exp)
def perplexity(outputs: torch.Tensor, targets: torch.Tensor, task: Task, output_kind: str) -> torch.Tensor:
    """Summed negative log-likelihood of the targets (per token, padding not counted), reported as
    exp(its mean): the perplexity of language models (classifiers: of the class labels)."""
    if not kind_of(task).logits_over_classes or output_kind != "logits":
        raise ValueError("perplexity needs class logits (cross_entropy) of a sequence or multiclass task")
    return F.cross_entropy(
        outputs.reshape(-1, outputs.shape[-1]).double(), targets.reshape(-1).long(), ignore_index=task.ignore_index,
        reduction="sum",
    )


@METRICS.register("exact_match")
def exact_match(outputs: torch.Tensor, targets: torch.Tensor, task: Task, output_kind: str) -> torch.Tensor:
    """(responses predicted exactly, responses) of a sequence task, a response being a run of consecutive
    counted targets (an instruction item's response and end-of-text token; each assistant turn of a chat; a
    whole window of plain text). A response is exact when the most likely token is right at each of its
    positions given the true tokens before it, which is when greedy decoding from its prompt (temperature 0)
    generates it exactly, token by token."""
    if not kind_of(task).per_position:
        raise UserError(f"metrics: exact_match scores the responses of a sequence task, not a {task.kind} task; "
                        "remove it")
    counted = task.counted(targets)
    starts = counted.clone()
    starts[:, 1:] &= ~counted[:, :-1]
    response = starts.reshape(-1).cumsum(0) - 1  # each position's response (counted positions only)
    wrong = (counted & (outputs.argmax(dim=-1) != targets)).reshape(-1)
    responses = starts.sum()
    failed = torch.zeros(int(responses), dtype=torch.bool, device=targets.device)
    failed[response[wrong]] = True
    return torch.stack([responses - failed.sum(), responses])


@METRICS.register("mae")
def mae(outputs: torch.Tensor, targets: torch.Tensor, task: Task, output_kind: str) -> torch.Tensor:
    """Absolute errors in the target's own units (regression; in float64, as large units overflow float32)."""
    return (task.decode(outputs.double()) - task.decode(targets.double())).abs().sum()


@METRICS.register("mse")
def mse(outputs: torch.Tensor, targets: torch.Tensor, task: Task, output_kind: str) -> torch.Tensor:
    """Squared errors in the target's own units (regression; in float64, as large units overflow float32)."""
    return ((task.decode(outputs.double()) - task.decode(targets.double())) ** 2).sum()


for _name in classifier_metrics.NAMES:
    METRICS.register(_name, state=True)(partial(classifier_metrics.build, _name))


def default_metrics(task: Task) -> list[str]:
    """The task kind's default metrics: MAE for regression, accuracy for classifiers, token accuracy and
    perplexity for sequence tasks, none (the loss alone) for a task scored by the model."""
    return list(kind_of(task).default_metrics)

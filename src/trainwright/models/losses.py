"""Built-in losses. `output` says what the model's output means, so metrics and `predict` read it right.

`model` is no loss of its own: the model computes its loss (step.py). For sequence tasks a loss is
given the positions as items (`PerPosition`), so `cross_entropy` scores (batch, time, classes) outputs
against (batch, time) targets as they are."""

from __future__ import annotations

import torch
from torch import nn

from trainwright.registry import LOSSES
from trainwright.step import MODEL_LOSS, ModelLoss

LOSSES.register("bce", output="probability")(nn.BCELoss)
LOSSES.register("bce_with_logits", output="logits")(nn.BCEWithLogitsLoss)
LOSSES.register("cross_entropy", output="logits")(nn.CrossEntropyLoss)
LOSSES.register("l1", output="value")(nn.L1Loss)
LOSSES.register("mse", output="value")(nn.MSELoss)
LOSSES.register("smooth_l1", output="value")(nn.SmoothL1Loss)
LOSSES.register("huber", output="value")(nn.HuberLoss)
LOSSES.register(MODEL_LOSS)(ModelLoss)


class PerPosition(nn.Module):
    """A loss over every position of a sequence: outputs (..., classes) and targets (...) flattened to
    (positions, classes) and (positions,), as torch's losses take them."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(outputs.flatten(0, -2), targets.flatten())

"""Built-in losses. `output` says what the model's output means, so metrics and `predict` read it right."""

from __future__ import annotations

from torch import nn

from trainwright.registry import LOSSES

LOSSES.register("bce", output="probability")(nn.BCELoss)
LOSSES.register("bce_with_logits", output="logits")(nn.BCEWithLogitsLoss)
LOSSES.register("cross_entropy", output="logits")(nn.CrossEntropyLoss)
LOSSES.register("l1", output="value")(nn.L1Loss)
LOSSES.register("mse", output="value")(nn.MSELoss)
LOSSES.register("smooth_l1", output="value")(nn.SmoothL1Loss)
LOSSES.register("huber", output="value")(nn.HuberLoss)

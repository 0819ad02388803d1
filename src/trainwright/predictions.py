"""What a model's outputs mean: probabilities and predicted labels, given the task and the loss."""

from __future__ import annotations

import torch

from trainwright.data.bundle import Task


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

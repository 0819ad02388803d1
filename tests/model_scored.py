"""A data set and a model of the user's own for tests/test_task_kinds.py (named by import path, with tests/
on PYTHONPATH): points whose task is scored_by_model, and a model that computes its own loss (it is given
the noisy points and scored on giving back the clean ones)."""

from __future__ import annotations

import torch
from torch import nn

from trainwright.data.bundle import DataBundle, Task, TensorSplit


def points(num_points: int = 256) -> DataBundle:
    """2-D points, each its own target: only a model that scores itself can learn from them."""
    generator = torch.Generator().manual_seed(0)
    train, val = torch.randn(num_points, 2, generator=generator), torch.randn(64, 2, generator=generator)
    return DataBundle(TensorSplit(train, train), TensorSplit(val, val), Task("scored_by_model"))


class Denoiser(nn.Module):
    """A linear map scored on giving back the clean points from noisy ones: forward(inputs, targets)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.linear(inputs + 0.1 * torch.randn_like(inputs))
        return {"loss": nn.functional.mse_loss(outputs, targets)}


def denoiser() -> Denoiser:
    return Denoiser()

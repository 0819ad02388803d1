"""Data sets generated in memory: the 2-D heart shape and the straight line y = 0.7x + 0.3."""

from __future__ import annotations

import torch

from trainwright.data.bundle import DataBundle, Task, TensorSplit


def _split(inputs: torch.Tensor, targets: torch.Tensor, val_fraction: float) -> tuple[TensorSplit, TensorSplit]:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    n_train = int(round(len(inputs) * (1.0 - val_fraction)))
    return TensorSplit(inputs[:n_train], targets[:n_train]), TensorSplit(inputs[n_train:], targets[n_train:])


def heart_labels(points: torch.Tensor) -> torch.Tensor:
    """1.0 inside the heart curve (x^2 + y^2 - 1)^3 - x^2 y^3 < 0, else 0.0; shape (N, 1)."""
    x, y = points[:, 0], points[:, 1]
    inside = (x**2 + y**2 - 1) ** 3 - x**2 * y**3 < 0
    return inside.float().unsqueeze(1)


def heart(num_points: int = 100_000, seed: int = 123, val_fraction: float = 0.2) -> DataBundle:
    """Points uniform in [-2, 2]^2 (from `seed`), labelled inside/outside the heart; 80/20 split."""
    if num_points < 2:
        raise ValueError(f"num_points must be at least 2, got {num_points}")
    generator = torch.Generator().manual_seed(seed)
    points = torch.rand(num_points, 2, generator=generator) * 4 - 2
    train, val = _split(points, heart_labels(points), val_fraction)
    return DataBundle(
        train=train,
        val=val,
        task=Task("binary", class_names=("outside", "inside")),
        describe_input=lambda i: f"({val.inputs[i, 0].item():.2f}, {val.inputs[i, 1].item():.2f})",
    )


def linear(
    weight: float = 0.7, bias: float = 0.3, start: float = 0.0, end: float = 1.0, step: float = 0.02,
    val_fraction: float = 0.2,
) -> DataBundle:
    """X = arange(start, end, step), y = weight * X + bias, first 80% train, last 20% validation."""
    inputs = torch.arange(start, end, step).unsqueeze(1)
    train, val = _split(inputs, weight * inputs + bias, val_fraction)
    return DataBundle(
        train=train, val=val, task=Task("regression"), describe_input=lambda i: f"x={val.inputs[i, 0].item():.2f}"
    )

"""Data sets generated in memory: the 2-D heart shape and the straight line y = 0.7x + 0.3."""

from __future__ import annotations

import torch

from trainwright.data.arguments import check_at_least, check_test_fraction, check_val_fraction
from trainwright.data.bundle import DataBundle, Task, TensorSplit


def _split(inputs: torch.Tensor, targets: torch.Tensor, val_fraction: float) -> tuple[TensorSplit, TensorSplit]:
    check_val_fraction(val_fraction)
    n_train = int(round(len(inputs) * (1.0 - val_fraction)))
    return TensorSplit(inputs[:n_train], targets[:n_train]), TensorSplit(inputs[n_train:], targets[n_train:])


def heart_labels(points: torch.Tensor) -> torch.Tensor:
    """1.0 inside the heart curve (x^2 + y^2 - 1)^3 - x^2 y^3 < 0, else 0.0; shape (N, 1)."""
    x, y = points[:, 0], points[:, 1]
    inside = (x**2 + y**2 - 1) ** 3 - x**2 * y**3 < 0
    return inside.float().unsqueeze(1)


def heart(
    num_points: int = 100_000, seed: int = 123, val_fraction: float = 0.2, test_fraction: float = 0.0
) -> DataBundle:
    """Points uniform in [-2, 2]^2 (from `seed`), labelled inside/outside the heart; 80/20 split. With
    `test_fraction`, that share of the points (the last ones) is a test split, the rest split as before."""
    check_at_least("num_points", num_points, 2)
    check_test_fraction(test_fraction)
    generator = torch.Generator().manual_seed(seed)
    points = torch.rand(num_points, 2, generator=generator) * 4 - 2
    labels = heart_labels(points)
    kept = num_points - (max(1, round(num_points * test_fraction)) if test_fraction else 0)
    train, val = _split(points[:kept], labels[:kept], val_fraction)
    return DataBundle(
        train=train,
        val=val,
        test=TensorSplit(points[kept:], labels[kept:]) if test_fraction else None,
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

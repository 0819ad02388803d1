"""Built-in models of the tutorial workflows."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainwright.errors import UserError, did_you_mean
from trainwright.registry import MODELS

_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}


def _activation(name: str) -> nn.Module:
    return _ACTIVATIONS[name]()


def check_model_arguments(kwargs: dict[str, Any]) -> None:
    """The values the built-in models refuse (their builders call this, `trainwright check` too): sizes of at
    least 1, activations by name."""
    for key in ("in_features", "out_features", "num_classes", "in_channels"):
        if key in kwargs and kwargs[key] < 1:
            raise UserError(f"model.{key} must be at least 1, got {kwargs[key]}")
    hidden = kwargs.get("hidden") or []
    if any(size < 1 for size in hidden):
        raise UserError(
            f"model.hidden: every layer needs at least 1 unit, got {list(hidden)} (a layer of 0 units would cut the "
            "model off from its input); give sizes of at least 1, or hidden: [] for no hidden layer"
        )
    for key in ("activation", "output_activation"):
        name = kwargs.get(key)
        if name is not None and name not in _ACTIVATIONS:
            raise UserError(
                f"model.{key}: unknown activation '{name}'{did_you_mean(name, list(_ACTIVATIONS))} "
                f"(one of {', '.join(sorted(_ACTIVATIONS))})"
            )


@MODELS.register("mlp", check=check_model_arguments)
def mlp(
    in_features: int,
    hidden: list[int],
    out_features: int,
    activation: str = "relu",
    output_activation: str | None = None,
) -> nn.Sequential:
    """Flatten, then Linear layers with `activation` between them (FashionMNIST 784-512-512-10, heart 2-72-36-1)."""
    check_model_arguments({"in_features": in_features, "hidden": hidden, "out_features": out_features,
                           "activation": activation, "output_activation": output_activation})
    layers: list[nn.Module] = [nn.Flatten()]
    sizes = [in_features, *hidden]
    for size_in, size_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(size_in, size_out), _activation(activation)]
    layers.append(nn.Linear(sizes[-1], out_features))
    if output_activation:
        layers.append(_activation(output_activation))
    return nn.Sequential(*layers)


@MODELS.register("lenet", check=check_model_arguments)
def lenet(num_classes: int = 10, in_channels: int = 1, activation: str = "relu") -> nn.Sequential:
    """LeNet-5 for 28x28 images: conv 1->6 (pad 2) -> pool -> conv 6->16 -> pool -> fc 400-120-84-classes."""
    check_model_arguments({"num_classes": num_classes, "in_channels": in_channels, "activation": activation})
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
        _activation(activation),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5),
        _activation(activation),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        _activation(activation),
        nn.Linear(120, 84),
        _activation(activation),
        nn.Linear(84, num_classes),
    )


class LinearRegression(nn.Module):
    """y = weight * x + bias with one weight and one bias, as in the PyTorch workflow tutorial."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1))
        self.bias = nn.Parameter(torch.randn(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x + self.bias


@MODELS.register("linear_regression")
def linear_regression() -> LinearRegression:
    return LinearRegression()

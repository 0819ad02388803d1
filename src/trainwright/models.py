"""Built-in models of the tutorial workflows."""

from __future__ import annotations

import torch
from torch import nn

from trainwright.errors import UserError
from trainwright.registry import MODELS

_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got '{name}'")
    return _ACTIVATIONS[name]()


@MODELS.register("mlp")
def mlp(
    in_features: int,
    hidden: list[int],
    out_features: int,
    activation: str = "relu",
    output_activation: str | None = None,
) -> nn.Sequential:
    """Flatten, then Linear layers with `activation` between them (FashionMNIST 784-512-512-10, heart 2-72-36-1)."""
    if any(size < 1 for size in hidden):
        raise UserError(
            f"model.hidden: every layer needs at least 1 unit, got {list(hidden)} (a layer of 0 units would cut the "
            "model off from its input); give sizes of at least 1, or hidden: [] for no hidden layer"
        )
    layers: list[nn.Module] = [nn.Flatten()]
    sizes = [in_features, *hidden]
    for size_in, size_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(size_in, size_out), _activation(activation)]
    layers.append(nn.Linear(sizes[-1], out_features))
    if output_activation:
        layers.append(_activation(output_activation))
    return nn.Sequential(*layers)


@MODELS.register("lenet")
def lenet(num_classes: int = 10, in_channels: int = 1, activation: str = "relu") -> nn.Sequential:
    """LeNet-5 for 28x28 images: conv 1->6 (pad 2) -> pool -> conv 6->16 -> pool -> fc 400-120-84-classes."""
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

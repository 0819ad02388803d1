"""A small model with tied weights for the tests (named by import path `tied_models:tied_net`, with tests/
on PYTHONPATH): two Linear layers share one weight, as a language model's embedding and output head do."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """A residual tanh layer: the class tests shard one by one under fsdp."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.linear(x))


class TiedNet(nn.Module):
    """2 -> width -> blocks -> `encode` -> `decode` (the same weight as `encode`) -> 1, sigmoid output."""

    def __init__(self, width: int = 8, blocks: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(2, width)
        self.blocks = nn.Sequential(*(Block(width) for _ in range(blocks)))
        self.encode = nn.Linear(width, width)
        self.decode = nn.Linear(width, width)
        self.decode.weight = self.encode.weight
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(torch.relu(self.inp(x)))
        h = torch.relu(self.decode(torch.relu(self.encode(h))))
        return torch.sigmoid(self.out(h))


def tied_net(width: int = 8, blocks: int = 2) -> TiedNet:
    return TiedNet(width, blocks)

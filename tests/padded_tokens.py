"""Components for tests/test_loss_normalisation.py (by import path, tests/ on PYTHONPATH): sequences of 12
token positions of which 1 to 12 are real (the targets of the rest are -100, the ignore index), and a
user's (batch, time, vocab) model."""

from __future__ import annotations

import torch
from torch import nn

from trainwright.data.bundle import IGNORE_INDEX, DataBundle, Task, TensorSplit


def padded(items: int = 300, length: int = 12, vocab: int = 16, seed: int = 0) -> DataBundle:
    """`items` sequences; each target is (3 * input + 1) % vocab where real, -100 after a random length."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, vocab, (items, length), generator=g)
    targets = (3 * inputs + 1) % vocab
    real = torch.randint(1, length + 1, (items, 1), generator=g)
    targets[torch.arange(length).expand(items, length) >= real] = IGNORE_INDEX
    cut = items * 4 // 5
    task = Task("sequence", class_names=tuple(str(i) for i in range(vocab)))
    return DataBundle(TensorSplit(inputs[:cut], targets[:cut]), TensorSplit(inputs[cut:], targets[cut:]), task)


class TokenNet(nn.Module):
    """Token ids (batch, time) -> logits (batch, time, vocab)."""

    def __init__(self, vocab: int = 16, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(ids)))

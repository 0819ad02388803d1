"""Components for tests/test_collate.py (by import path, tests/ on PYTHONPATH): token sequences of 3 to 12
tokens, each item its own length, as (inputs, targets) pairs or as named tensors; and a model that takes
named tensors (with an attention mask)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from trainwright.data.bundle import DataBundle, Task

VOCAB = 16


class Ragged(Dataset):
    def __init__(self, lengths: torch.Tensor, seed: int, named: bool) -> None:
        self.lengths, self.seed, self.named = lengths, seed, named

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int):
        g = torch.Generator().manual_seed(self.seed * 100_003 + index)
        inputs = torch.randint(0, VOCAB, (int(self.lengths[index]),), generator=g)
        targets = (3 * inputs + 1) % VOCAB
        return {"input_ids": inputs, "labels": targets} if self.named else (inputs, targets)


def ragged(items: int = 200, named: bool = False, seed: int = 0) -> DataBundle:
    lengths = torch.randint(3, 13, (items,), generator=torch.Generator().manual_seed(seed))
    cut = items * 4 // 5
    task = Task("sequence", class_names=tuple(str(i) for i in range(VOCAB)))
    return DataBundle(Ragged(lengths[:cut], seed, named), Ragged(lengths[cut:], seed + 1, named), task)


class MaskedNet(nn.Module):
    """input_ids (batch, time) and attention_mask -> logits (batch, time, vocab); padded positions are zeroed
    before the head, so what they hold never matters."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(input_ids)) * attention_mask[..., None])


class TokenNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(ids)))


def by_eights(items, **kwargs):
    """A user collate function: `pad` to a multiple of 8, by import path."""
    from trainwright.data.collate import pad

    return pad(items, pad_to_multiple_of=8)

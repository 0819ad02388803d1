"""A data set of Hugging Face style batches for the tests (named by import path `token_batches:token_windows`,
with tests/ on PYTHONPATH): windows of a learnable token sequence as {input_ids, attention_mask, labels,
shift_labels}. `labels` are the next tokens, aligned with the logits (what trainwright's per-token metrics
compare); `shift_labels` gives transformers' causal-LM loss the same, so it does not shift them again."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from trainwright.data.bundle import DataBundle, Task


class Windows(Dataset):
    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens  # (windows, context + 1)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        window = self.tokens[index]
        inputs, following = window[:-1].clone(), window[1:].clone()
        return {"input_ids": inputs, "attention_mask": torch.ones_like(inputs), "labels": following,
                "shift_labels": following.clone()}


def token_windows(windows: int = 320, context: int = 16, vocab_size: int = 32, seed: int = 0) -> DataBundle:
    """`windows` windows of `context` + 1 tokens, each token mostly (3 * previous + 1) % vocab_size; the last
    20% validate."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.empty(windows, context + 1, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, vocab_size, (windows,), generator=g)
    for position in range(1, context + 1):
        noise = torch.randint(0, vocab_size, (windows,), generator=g)
        keep = torch.rand(windows, generator=g) < 0.9
        tokens[:, position] = torch.where(keep, (3 * tokens[:, position - 1] + 1) % vocab_size, noise)
    n_train = int(windows * 0.8)
    task = Task("sequence", class_names=tuple(str(i) for i in range(vocab_size)))
    return DataBundle(train=Windows(tokens[:n_train]), val=Windows(tokens[n_train:]), task=task)

"""The batch order: a function of (seed, epoch) over GLOBAL batches, sliced per process.

Because the order never depends on the process count, a run can stop at global batch b and go on
from batch b with any number of processes, and no sample is repeated or skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainwright.data.bundle import TensorSplit

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled sample indices of one epoch, the same on every process and every restart."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint64)
    generator = torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
    return torch.randperm(num_samples, generator=generator)


def batches_per_epoch(num_samples: int, batch_size: int) -> int:
    """Training drops the last incomplete global batch, so every step sees exactly batch_size samples."""
    return num_samples // batch_size


def train_indices(
    num_samples: int, batch_size: int, seed: int, epoch: int, start: int, rank: int, world_size: int
) -> Iterator[torch.Tensor]:
    """This process's sample indices for global batches start, start+1, ... of `epoch`."""
    order = epoch_order(num_samples, seed, epoch)
    per_process = batch_size // world_size
    for batch in range(start, batches_per_epoch(num_samples, batch_size)):
        first = batch * batch_size + rank * per_process
        yield order[first : first + per_process]


def eval_indices(num_samples: int, batch_size: int, rank: int, world_size: int) -> list[tuple[torch.Tensor, int]]:
    """This process's contiguous share of the evaluation samples, in order, in batches, each with the number
    of its samples that count. Every process gets the same number of batches (a sharded model's forward is
    a collective): one whose share ends first gets one-sample filler batches in which none count."""
    share = torch.tensor_split(torch.arange(num_samples), world_size)[rank]
    batches = [(batch, len(batch)) for batch in torch.split(share, batch_size) if len(batch)]
    most = math.ceil(math.ceil(num_samples / world_size) / batch_size)
    return batches + [(torch.zeros(1, dtype=torch.long), 0)] * (most - len(batches))


def iterate(dataset: Dataset, indices: Iterator[torch.Tensor], num_workers: int = 0) -> Iterator[Batch]:
    """Serve batches: whole-tensor indexing for a TensorSplit, a DataLoader over the same indices otherwise."""
    if isinstance(dataset, TensorSplit):
        for index in indices:
            yield dataset.inputs[index], dataset.targets[index]
        return
    loader = DataLoader(dataset, batch_sampler=[index.tolist() for index in indices], num_workers=num_workers)
    yield from loader

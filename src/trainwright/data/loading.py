"""The batch order: a function of (seed, epoch) over GLOBAL batches, sliced per process; and how batches
are served: whole-tensor indexing for a TensorSplit, else one DataLoader for the whole run (persistent
workers) whose batch sampler the trainer sets at each epoch's (epoch, first batch).

Because the order never depends on the process count, a run can stop at global batch b and go on
from batch b with any number of processes, and no sample is repeated or skipped.

Items served one by one are computed with torch's, Python's and NumPy's global random generators seeded
from (run seed, epoch, item index) alone (`item_seed`), never from the worker, the process count or what
ran before: random augmentation gives the same items with 0 or N workers, on 1 or N processes, resumed or
not. In the main process (0 workers) the generators are put back afterwards, so the model's own random
draws (dropout) are not disturbed.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from trainwright.data.bundle import TensorSplit, split_size
from trainwright.data.collate import collate_of
from trainwright.errors import UserError
from trainwright.run.interrupts import end_workers_at_exit, quiet_worker

Batch = Any  # what the data set's items collate to: (inputs, targets) or named tensors
EVAL_EPOCH = -1  # the `epoch` that items served for evaluation and prediction are seeded with
_MASK = (1 << 64) - 1


def epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled sample indices of one epoch, the same on every process and every restart."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint64)
    generator = torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
    return torch.randperm(num_samples, generator=generator)


def batches_per_epoch(num_samples: int, batch_size: int) -> int:
    """Training drops the last incomplete global batch, so every step sees exactly batch_size samples."""
    return num_samples // batch_size


def steps_per_epoch(batch_size: int, grad_accum_steps: int, train: Dataset) -> int:
    """Optimizer steps in one epoch of the training split (the last incomplete global batch is dropped)."""
    micro = batches_per_epoch(split_size(train), batch_size)
    if micro == 0:
        raise UserError(f"data.batch_size={batch_size} is larger than the training split ({split_size(train)} samples)")
    return math.ceil(micro / grad_accum_steps)


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


# --- one item's random generators -------------------------------------------------------------------


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of item `index` in `epoch` of a run seeded `seed` (a 63-bit splitmix64 mix of the three)."""
    value = (seed * 0x9E3779B97F4A7C15 ^ (epoch & _MASK) * 0xBF58476D1CE4E5B9 ^ index * 0x94D049BB133111EB) & _MASK
    for shift, multiplier in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        value = ((value ^ (value >> shift)) * multiplier) & _MASK
    return (value ^ (value >> 31)) >> 1


def seed_item(seed: int, epoch: int, index: int) -> None:
    """Seed torch's (CPU), Python's and NumPy's global generators for one item."""
    value = item_seed(seed, epoch, index)
    torch.default_generator.manual_seed(value)
    random.seed(value)
    np.random.seed(value & 0xFFFFFFFF)


@contextlib.contextmanager
def _generators_kept() -> Iterator[None]:
    """In the main process: the global generators as they were before (a worker's are its own)."""
    if get_worker_info() is not None:
        yield
        return
    saved = torch.get_rng_state(), random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])


class SeededItems(Dataset):
    """A data set read by keys (epoch, index): item `index`, computed with the generators seeded by
    `seed_item(seed, epoch, index)`. DataLoader hands a batch's keys to `__getitems__` at once."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return split_size(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[Any]:
        items, dataset, seed = [], self.dataset, self.seed
        with _generators_kept():
            for epoch, index in keys:
                seed_item(seed, epoch, index)
                items.append(dataset[index])
        return items


# --- streamed data sets ---------------------------------------------------------------------------

STREAM_CONTRACT = (
    "a streamed data set (a torch IterableDataset) must define __len__ (its samples per epoch) and "
    "stream(epoch, positions, seed): the items at `positions` (increasing ints) of epoch `epoch`'s order of "
    "the whole data set, a function of (seed, epoch) alone (epoch -1: evaluation, in its stored order), one "
    "item per position; that is how a run resumes at its exact sample (README: Writing your own components)"
)


def is_stream(dataset: Dataset) -> bool:
    return isinstance(dataset, IterableDataset)


def require_stream(dataset: Dataset, where: str) -> None:
    """A streamed split that keeps the contract above, else one UserError that explains it."""
    if not is_stream(dataset):
        return
    missing = [name for name in ("__len__", "stream") if not callable(getattr(dataset, name, None))]
    if missing:
        raise UserError(
            f"{where} is {type(dataset).__name__}, an IterableDataset without {' and '.join(missing)}; "
            f"{STREAM_CONTRACT}"
        )


def process_positions(batches: range, batch_size: int, rank: int, world_size: int) -> Iterator[int]:
    """This process's positions in the epoch's stream for global batches `batches`: its slice of each."""
    per_process = batch_size // world_size
    for batch in batches:
        first = batch * batch_size + rank * per_process
        yield from range(first, first + per_process)


def _seeded_items(dataset: Any, epoch: int, positions: Callable[[], Iterator[int]], seed: int) -> Iterator[Any]:
    """The stream's items at the positions `positions()` gives, each computed with the generators seeded by
    (seed, epoch, position) (in the main process they are put back after each item)."""
    served, count = iter(dataset.stream(epoch, positions(), seed)), 0
    for position in positions():
        with _generators_kept():
            seed_item(seed, epoch, position)
            try:
                item = next(served)
            except StopIteration:
                raise UserError(f"{type(dataset).__name__}.stream ended after {count} items of epoch {epoch}; it must "
                                "give one item per position asked for") from None
        count += 1
        yield item


class StreamItems(IterableDataset):
    """A training loader's view of a stream: this process's items of global batches start, start+1, ... of
    `epoch`, read from a tensor in shared memory (set before each pass, seen by persistent workers). Worker
    w of W serves batches start+w, start+w+W, ...; the DataLoader takes batches from its workers in turn,
    so they arrive in order."""

    def __init__(self, dataset: Any, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.position = torch.zeros(2, dtype=torch.long).share_memory_()  # (epoch, first batch)

    def __iter__(self) -> Iterator[Any]:
        epoch, start = self.position.tolist()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batches = range(start + worker, batches_per_epoch(len(self.dataset), self.batch_size), workers)
        return _seeded_items(
            self.dataset, epoch, lambda: process_positions(batches, self.batch_size, self.rank, self.world_size),
            self.seed,
        )


def _stream_batches(dataset: Any, indices: Iterator[torch.Tensor], seed: int, epoch: int) -> Iterator[Batch]:
    """Batches of a stream at the positions `indices` holds, read in one pass (evaluation's positions
    increase; a filler item, which never counts, repeats the item before it rather than going back)."""
    batches = [index.tolist() for index in indices]

    def increasing() -> Iterator[int]:
        highest = -1
        for position in (p for batch in batches for p in batch):
            if position > highest:
                highest = position
                yield position

    served, highest, last = _seeded_items(dataset, epoch, increasing, seed), -1, None
    collate = collate_of(dataset)
    for batch in batches:
        chosen = []
        for position in batch:
            if position > highest:
                highest, last = position, next(served)
            chosen.append(last)
        yield collate(chosen)


# --- serving batches ------------------------------------------------------------------------------


def peek(batches: Iterator[Batch]) -> tuple[Batch | None, Iterator[Batch]]:
    """The first batch (None when there is none) and an iterator over all of them, the first included (a
    pass's first batch tells the step the batches' form)."""
    first = next(batches, None)
    return first, batches if first is None else itertools.chain([first], batches)



def _own_generator(seed: int) -> torch.Generator:
    """For a DataLoader's one draw per pass (its workers' base seed, which `seed_item` overrides), which
    would otherwise come from torch's global generator and shift the model's random draws (dropout)."""
    return torch.Generator().manual_seed(seed)


def iterate(
    dataset: Dataset, indices: Iterator[torch.Tensor], seed: int = 0, epoch: int = EVAL_EPOCH
) -> Iterator[Batch]:
    """Serve batches in the main process (evaluation, prediction, start-up checks): whole-tensor indexing
    for a TensorSplit, a stream's items at those positions of its epoch order, else a DataLoader without
    workers over the same indices; items seeded from (seed, epoch, index)."""
    if isinstance(dataset, TensorSplit):
        for index in indices:
            yield dataset.inputs[index], dataset.targets[index]
        return
    if is_stream(dataset):
        yield from _stream_batches(dataset, indices, seed, epoch)
        return
    keys = [[(epoch, i) for i in index.tolist()] for index in indices]
    yield from DataLoader(SeededItems(dataset, seed), batch_sampler=keys, collate_fn=collate_of(dataset),
                          generator=_own_generator(seed))


class EpochBatches:
    """The batch sampler of a run's training loader: this process's keys (epoch, index) of global
    batches start, start+1, ... of `epoch`; `at` sets the epoch and the first batch before each pass."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = self.start = 0

    def at(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return batches_per_epoch(self.num_samples, self.batch_size) - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        for index in train_indices(
            self.num_samples, self.batch_size, self.seed, epoch, self.start, self.rank, self.world_size
        ):
            yield [(epoch, i) for i in index.tolist()]


def _worker_errors(batches: Iterator[Batch]) -> Iterator[Batch]:
    """The batches; a UserError raised in a worker (a damaged image) as its own message: DataLoader raises
    it again in this process with the worker's traceback written into the message."""
    try:
        yield from batches
    except UserError as exc:
        text, marker = str(exc), f"{type(exc).__name__}: "
        if "Original Traceback" not in text or marker not in text:
            raise
        raise type(exc)(text.rsplit(marker, 1)[1].strip()) from None


def resolve_workers(num_workers: int | str) -> int:
    """`data.num_workers`: a number, or 'auto': the CPU cores this process may use, shared among the
    processes of this machine, less one for the training process itself, at most 8."""
    if num_workers != "auto":
        return int(num_workers)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, per_process - 1))


class TrainBatches:
    """The training batches of a whole run for one process. A TensorSplit is indexed a batch at a time
    (no per-item calls); any other data set is read by one DataLoader made once, whose workers stay up
    from epoch to epoch (persistent), with pinned memory when training on CUDA: over keys (epoch, index)
    for a map-style data set, over this process's slice of the stream for a streamed one."""

    def __init__(
        self, dataset: Dataset, batch_size: int, seed: int, rank: int, world_size: int,
        num_workers: int = 0, prefetch_factor: int | None = None, pin_memory: bool = False,
    ) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.loader: DataLoader | None = None
        self.stream: StreamItems | None = None
        served: dict[str, Any] = {}
        if is_stream(dataset):
            self.stream = StreamItems(dataset, batch_size, seed, rank, world_size)
            served = {"dataset": self.stream, "batch_size": batch_size // world_size}
        elif not isinstance(dataset, TensorSplit):
            self.sampler = EpochBatches(split_size(dataset), batch_size, seed, rank, world_size)
            served = {"dataset": SeededItems(dataset, seed), "batch_sampler": self.sampler}
        if served:
            if num_workers > 0:
                end_workers_at_exit()
            self.loader = DataLoader(
                **served, collate_fn=collate_of(dataset), num_workers=num_workers, persistent_workers=num_workers > 0,
                pin_memory=pin_memory,
                prefetch_factor=prefetch_factor if num_workers > 0 else None, generator=_own_generator(seed),
                worker_init_fn=quiet_worker if num_workers > 0 else None,
            )

    def indices(self, epoch: int, start: int) -> list[torch.Tensor]:
        """This process's sample indices of batches start, start+1, ... of `epoch` (a stream's: its
        `sample_ids(seed, epoch)` at this process's positions, where it has that method, else the positions)."""
        if self.stream is not None:
            batches = range(start, batches_per_epoch(split_size(self.dataset), self.batch_size))
            positions = torch.tensor(list(process_positions(batches, self.batch_size, self.rank, self.world_size)))
            ids = getattr(self.dataset, "sample_ids", None)
            chosen = ids(self.seed, epoch)[positions] if callable(ids) and len(positions) else positions
            return list(torch.split(chosen, self.batch_size // self.world_size))
        return list(train_indices(split_size(self.dataset), self.batch_size, self.seed, epoch, start, self.rank,
                                  self.world_size))

    def epoch(self, epoch: int, start: int, indices: list[torch.Tensor]) -> Iterator[Batch]:
        """The batches of `indices` (those of `self.indices(epoch, start)`)."""
        if self.loader is None:
            inputs, targets = self.dataset.inputs, self.dataset.targets  # type: ignore[attr-defined]
            return ((inputs[index], targets[index]) for index in indices)
        if self.stream is not None:
            self.stream.position.copy_(torch.tensor([epoch, start]))
        else:
            self.sampler.at(epoch, start)
        return _worker_errors(iter(self.loader))

    def close(self) -> None:
        """Let the loader go: its workers stop once nothing holds its iterator (sooner than at exit)."""
        self.loader = None

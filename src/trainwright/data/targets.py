"""Targets checked against the data set's task, one rule per task kind (data/tasks.py) for every data kind:
binary targets are 0 or 1, class indices run from 0 to classes - 1, regression targets are finite numbers, a
sequence's token ids lie in the vocabulary (or are its padding). `build_data` checks every split held as tensors at
start-up; data served item by item check each item as it is read (shards) and the first batch (preflight)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from trainwright.data.bundle import DataBundle, Task, TensorSplit
from trainwright.data.tasks import kind_of
from trainwright.errors import UserError


def check_targets(targets: torch.Tensor, task: Task, where: Callable[[int], str]) -> None:
    """A UserError naming the first target that does not fit `task`: `where(row)` says where it is."""
    found = kind_of(task).fits(targets, task)
    if found is None:
        return
    fits, rule = found
    bad = (~fits).nonzero()
    if len(bad):
        position = tuple(bad[0].tolist())
        value = targets[position].item()
        column = f", column {position[1]}" if len(position) > 1 and targets.shape[1] > 1 else ""
        raise UserError(f"{where(position[0])}{column}: the target {value:g} does not fit task '{task.kind}': {rule}")


def _where(split: Dataset, data_name: str, role: str) -> Callable[[int], str]:
    describe = getattr(split, "describe_target", None)
    if callable(describe):
        return describe
    return lambda row: f"data set '{data_name}', {role} split, item {row}"


def check_bundle_targets(bundle: DataBundle, data_name: str) -> None:
    """Every split held as tensors: its targets checked against the task (at start-up, before training)."""
    for role, split in (("train", bundle.train), ("val", bundle.val), ("test", bundle.test)):
        if isinstance(split, TensorSplit):
            check_targets(split.targets, bundle.task, _where(split, data_name, role))

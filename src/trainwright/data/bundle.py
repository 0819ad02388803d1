"""What a data set builder returns: splits, the task they pose, and how to show one input."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

# What each kind means (targets, default metrics, outputs): data/tasks.py. sequence: a class per position;
# scored_by_model: a task only a model that computes its own loss can learn (the run reports its loss alone).
TaskKind = Literal["binary", "multiclass", "regression", "sequence", "scored_by_model"]
RowTaskKind = Literal["binary", "multiclass", "regression"]  # a data set's task with one target per row
IGNORE_INDEX = -100  # torch's cross_entropy default, and Hugging Face's label for padding


def split_size(split: Dataset) -> int:
    """The number of samples of a split: every split has a length (a stream's too, stream.py's contract),
    though torch's Dataset declares none."""
    return len(split)  # type: ignore[arg-type]


class TensorSplit(Dataset):
    """A split held as two whole tensors, served a batch at a time by indexing (no per-item calls)."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"inputs ({len(inputs)}) and targets ({len(targets)}) differ in length")
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]


@dataclass(frozen=True)
class Task:
    """The learning problem; regression targets may be served standardized and mapped back by `decode`;
    sequence targets equal to `ignore_index` are padding."""

    kind: TaskKind
    class_names: tuple[str, ...] = ()
    target_mean: float = 0.0
    target_std: float = 1.0
    ignore_index: int = IGNORE_INDEX

    def counted(self, targets: torch.Tensor) -> torch.Tensor:
        """Sequence tasks: which positions count (their target is not `ignore_index`)."""
        return targets != self.ignore_index

    def decode(self, values: torch.Tensor) -> torch.Tensor:
        """Regression outputs/targets in the data's own units."""
        return values * self.target_std + self.target_mean

    def to_record(self) -> dict[str, Any]:
        """As data.json holds it, so a run can predict without reading its training data again."""
        return {"kind": self.kind, "class_names": list(self.class_names), "target_mean": self.target_mean,
                "target_std": self.target_std, "ignore_index": self.ignore_index}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Task:
        return cls(
            record["kind"], tuple(record["class_names"]), record["target_mean"], record["target_std"],
            record.get("ignore_index", IGNORE_INDEX),  # runs recorded before sequence tasks
        )


@dataclass
class DataBundle:
    """Train/val/test splits of one data set (test is val where the data set has no test split).

    `sources` names the files the data were read from (role -> path) and `preprocessing` holds the
    statistics the preparation used (JSON-able); both are recorded in the run dir (data.json)."""

    train: Dataset
    val: Dataset
    task: Task
    test: Dataset | None = None
    describe_input: Callable[[int], str] | None = field(default=None, repr=False)  # item i of eval_split
    sources: dict[str, Path] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    val_splits: dict[str, Dataset] = field(default_factory=dict)  # named ones (data.val_splits, set by build_data)

    @property
    def eval_split(self) -> Dataset:
        return self.test if self.test is not None else self.val

"""The rows of a training table, in order (benchmarks.loops has the loop of each key)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.workloads import Workload


@dataclass(frozen=True)
class Row:
    key: str
    label: Callable[[Workload], str]
    needs: str | None = None  # an optional package; without it the row is skipped

    def missing(self) -> str | None:
        """The optional package this row needs and this environment lacks."""
        return self.needs if self.needs and importlib.util.find_spec(self.needs) is None else None


ROWS = (
    Row("tutorial", lambda w: w.tutorial),
    Row("tensor-dataset", lambda w: "TensorDataset + DataLoader(shuffle=True)"),
    Row("hand-written", lambda w: "hand-written whole-tensor loop (randperm + indexing)"),
    Row("accelerate", lambda w: "plain Accelerate loop (prepare, accelerator.backward)"),
    Row("lightning", lambda w: "PyTorch Lightning Trainer (same TensorDataset DataLoader)", needs="pytorch_lightning"),
    Row("trainwright", lambda w: "trainwright `train(recipe)`: its train/epoch_seconds"),
    Row(
        "trainwright-nondeterministic",
        lambda w: "trainwright with `trainer.deterministic=false` (resume no longer bitwise): its train/epoch_seconds",
    ),
    Row(
        "trainwright-compile", lambda w: "trainwright with `trainer.compile=true`: its 2nd epoch's train/epoch_seconds"
    ),
)

"""A metric for the tests (named by import path `rank_probe:items`, with tests/ on PYTHONPATH) that counts the
items it scores (reported as 1.0) and, when RANK_PROBE_DIR is set, appends the item count of each batch to
RANK_PROBE_DIR/rank<R>.txt: which process scored how many items."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def items(outputs: torch.Tensor, targets: torch.Tensor, task: object, output_kind: str) -> torch.Tensor:
    folder = os.environ.get("RANK_PROBE_DIR")
    if folder:
        with (Path(folder) / f"rank{os.environ.get('RANK', '0')}.txt").open("a") as file:
            file.write(f"{len(targets)}\n")
    return torch.tensor(float(len(targets)))

"""What a reader of new inputs yields (data/inputs.py): model inputs with their ids. A module of its own,
so that data sets without tables (arrays, images, shards) do not import pandas with it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class InputBatch:
    """Model inputs for some items, with their ids (row number or file name), how to show item i (for
    printed lines), and the actual values where the input holds them (regression targets, in the data's
    units)."""

    ids: list[str]
    inputs: torch.Tensor
    describe: Callable[[int], str]
    actual: torch.Tensor | None = None

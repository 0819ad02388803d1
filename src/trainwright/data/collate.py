"""How items become a batch (`data.collate`): stacked (the default: items of one shape), `pad` (ragged
items padded to the longest of the batch) or a function of your own by import path, `fn(items) -> batch`.

The recipe's choice is set on the data set's splits (components.build_data) and read by every loader of
data/loading.py; a split held as tensors (TensorSplit) is never collated. Collation happens per batch,
after the (seed, epoch) order has chosen its items, so the order and exact resume are untouched."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

from trainwright.data.bundle import IGNORE_INDEX
from trainwright.errors import UserError

Collate = Callable[[list[Any]], Any]
COLLATE_ATTRIBUTE = "trainwright_collate"  # set on a split: the function its batches are collated with
TARGET_KEYS = ("labels", "shift_labels")  # a mapping item's targets (step.TARGETS_KEY, ALIGNED_LABELS_KEY)
MASK_KEY = "attention_mask"
LENGTH_KEY = "input_ids"  # whose lengths the attention mask marks (else the first padded tensor's)


def collate_of(dataset: Any) -> Collate:
    """The function the split's batches are collated with: the recipe's, else `stacked`."""
    return getattr(dataset, COLLATE_ATTRIBUTE, None) or stacked


def stacked(items: list[Any]) -> Any:
    """torch's default_collate; items of different shapes are one message naming data.collate."""
    try:
        return default_collate(items)
    except RuntimeError as exc:
        if "equal size" not in str(exc) and "same size" not in str(exc):
            raise
        raise UserError(
            f"the data set's items differ in shape and cannot be stacked into a batch ({_shapes(items)}); set "
            "data.collate: pad (pad each batch to its longest item: targets with -100, an attention_mask for "
            "items of named tensors; optional pad_to_multiple_of) or data.collate: package.module:function "
            "(your own: a list of items -> a batch)"
        ) from None


def _shapes(items: list[Any]) -> str:
    """The shapes of the first few items, for the message."""
    def shape(item: Any) -> str:
        if isinstance(item, torch.Tensor):
            return str(tuple(item.shape))
        if isinstance(item, Mapping):
            return "{" + ", ".join(f"{k}: {shape(v)}" for k, v in item.items()) + "}"
        if isinstance(item, Sequence) and not isinstance(item, str):
            return "(" + ", ".join(shape(v) for v in item) + ")"
        return type(item).__name__

    shown = ", ".join(shape(item) for item in items[:3])
    return f"items {shown}{', ...' if len(items) > 3 else ''}"


def pad(items: list[Any], pad_to_multiple_of: int | None = None, pad_value: float = 0,
        ignore_index: int = IGNORE_INDEX) -> Any:
    """Items of (input, target) or of named tensors, each tensor padded along its first dimension to the
    batch's longest (rounded up to `pad_to_multiple_of`): targets (a pair's second, a mapping's `labels` and
    `shift_labels`) with `ignore_index`, the rest with `pad_value`. Items of named tensors without an
    `attention_mask` get one: 1 for the real positions (of `input_ids`, else the first padded tensor)."""
    if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
        raise UserError(f"data.collate.pad_to_multiple_of must be at least 1, got {pad_to_multiple_of}")
    first = items[0]
    if isinstance(first, Mapping):
        batch = {key: _padded([item[key] for item in items], ignore_index if key in TARGET_KEYS else pad_value,
                              pad_to_multiple_of) for key in first}
        if MASK_KEY not in first:
            key = LENGTH_KEY if LENGTH_KEY in first else next(
                (k for k in first if isinstance(first[k], torch.Tensor) and first[k].ndim), None)
            if key is not None:
                lengths = torch.tensor([len(item[key]) for item in items])
                batch[MASK_KEY] = (torch.arange(batch[key].shape[1]) < lengths[:, None]).long()
        return batch
    if isinstance(first, Sequence) and len(first) == 2:
        return (_padded([item[0] for item in items], pad_value, pad_to_multiple_of),
                _padded([item[1] for item in items], ignore_index, pad_to_multiple_of))
    return _padded(list(items), pad_value, pad_to_multiple_of)


def _padded(values: list[Any], fill: float, multiple: int | None) -> Any:
    """Tensors of one or more dimensions padded to a common first dimension, stacked; others collated."""
    if not all(isinstance(v, torch.Tensor) and v.ndim for v in values):
        return default_collate(values)
    longest = max(len(v) for v in values)
    if multiple:
        longest = math.ceil(longest / multiple) * multiple
    out = values[0].new_full((len(values), longest, *values[0].shape[1:]), fill)
    for row, value in zip(out, values):
        row[: len(value)] = value
    return out

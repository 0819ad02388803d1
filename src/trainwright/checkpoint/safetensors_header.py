"""A safetensors file's header, checked whole before the file is trusted (no torch).

safetensors itself rejects a bad header only when a file is opened for loading, as a SafetensorError in
the middle of a resume or an export; this reads the header as bytes and says what is wrong with it, so a
file is classified as damaged (and skipped) before anything loads it. The rules are those of the format
(https://huggingface.co/docs/safetensors): an 8-byte little-endian header length, a JSON object of tensor
entries {dtype, shape, data_offsets} and an optional `__metadata__` str -> str map, then the data area,
which the tensors' byte ranges cover exactly, without gaps or overlaps, each `prod(shape) * itemsize` long.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METADATA = "__metadata__"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
ITEM_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}


class BadHeader(ValueError):
    """The file is not a whole, well-formed safetensors file; the message says why."""


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte range in the data area
    end: int


@dataclass(frozen=True)
class Header:
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]


def read_header(path: Path) -> Header:
    """The checked header of the safetensors file `path`; raises BadHeader (or OSError) when it is not one."""
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise BadHeader("shorter than a header")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise BadHeader("its header length runs past the end of the file")
        raw = file.read(length)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadHeader(f"its header is not JSON ({exc})") from None
    if not isinstance(header, dict) or not raw.lstrip().startswith(b"{"):
        raise BadHeader("its header is not a JSON object")
    metadata = header.pop(METADATA, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BadHeader(f"{METADATA} is not a map of strings to strings")
    tensors = {name: _entry(name, value) for name, value in header.items()}
    _check_data_area(tensors, size - 8 - length)
    return Header(tensors, metadata)


def header_problem(path: Path) -> str | None:
    """Why `path` is not a whole, well-formed safetensors file, or None."""
    try:
        read_header(path)
    except BadHeader as exc:
        return str(exc)
    return None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key appears twice")
    return dict(pairs)


def _entry(name: str, value: Any) -> TensorEntry:
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise BadHeader(f"tensor {name!r}: not an entry of dtype, shape and data_offsets")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(dtype, str) or dtype not in ITEM_BYTES:
        raise BadHeader(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_natural(n) for n in shape):
        raise BadHeader(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_natural(n) for n in offsets)
        or offsets[0] > offsets[1]
    ):
        raise BadHeader(f"tensor {name!r}: data_offsets {offsets!r} is not a [begin, end] byte range")
    begin, end = offsets
    if end - begin != math.prod(shape) * ITEM_BYTES[dtype]:
        raise BadHeader(f"tensor {name!r}: {end - begin} bytes do not hold shape {shape} of {dtype}")
    return TensorEntry(dtype, tuple(shape), begin, end)


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_data_area(tensors: dict[str, TensorEntry], data_bytes: int) -> None:
    """The tensors' byte ranges, in order, must tile the data area exactly."""
    position = 0
    for name, entry in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != position:
            what = "overlaps the tensor before it" if entry.begin < position else "leaves a gap before it"
            raise BadHeader(f"tensor {name!r}: data_offsets {[entry.begin, entry.end]} {what}")
        position = entry.end
    if position != data_bytes:
        raise BadHeader(f"its tensors cover {position} bytes of a {data_bytes}-byte data area (truncated or padded)")

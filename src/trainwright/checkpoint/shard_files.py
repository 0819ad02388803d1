"""The shard files of a sharded checkpoint's model/ or optimizer/ folder, checked as a whole (no torch).

torch.distributed.checkpoint's Hugging Face storage gives each tensor of a shard file its place in the
whole tensor in the file's `DCP_SHARDING_INFO` metadata (`saved_offsets`). A load trusts those offsets:
chunks that overlap, leave a gap or disagree on the dtype would load wrong values (or uninitialised memory)
without an error, so they make the checkpoint damaged here."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from trainwright.checkpoint.safetensors_header import BadHeader, read_header

SHARDING_INFO = "DCP_SHARDING_INFO"


@dataclass(frozen=True)
class Chunk:
    file: str
    dtype: str
    offsets: tuple[int, ...]
    shape: tuple[int, ...]


def shards_problem(folder: Path, names: set[str] | None = None) -> str | None:
    """Why the shard files in `folder` do not make whole tensors, or None. `names`: the tensors they must
    make, exactly (none, and then no file, for an optimizer without tensor state such as plain SGD); without
    it, at least one file."""
    if not folder.is_dir():
        return f"{folder.name}/ is missing"
    files = sorted(folder.glob("*.safetensors"))
    if not files and names is None:
        return f"{folder.name}/ holds no shard files"
    chunks: dict[str, list[Chunk]] = {}
    for path in files:
        name = f"{folder.name}/{path.name}"
        try:
            for key, chunk in _chunks(path, name).items():
                chunks.setdefault(key, []).append(chunk)
        except BadHeader as exc:
            return f"{name}: {exc}"
    if names is not None and (missing := sorted(names - set(chunks))):
        return f"{folder.name}/ holds no shards of tensor {missing[0]!r} (of {len(names)} the checkpoint records)"
    if names is not None and (extra := sorted(set(chunks) - names)):
        return f"{folder.name}/ holds a tensor {extra[0]!r} the checkpoint does not record"
    for key, parts in chunks.items():
        problem = _tiling_problem(parts)
        if problem:
            return f"{folder.name}/ tensor {key!r}: {problem}"
    return None


def whole_tensors(folder: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each tensor of a shard folder that `shards_problem` passed: its dtype and its whole shape."""
    chunks: dict[str, list[Chunk]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        for key, chunk in _chunks(path, path.name).items():
            chunks.setdefault(key, []).append(chunk)
    return {key: (parts[0].dtype, _whole(parts)) for key, parts in chunks.items()}


def _whole(parts: list[Chunk]) -> tuple[int, ...]:
    return tuple(max(p.offsets[d] + p.shape[d] for p in parts) for d in range(len(parts[0].shape)))


def _chunks(path: Path, name: str) -> dict[str, Chunk]:
    header = read_header(path)
    try:
        info = json.loads(header.metadata[SHARDING_INFO])
    except (KeyError, ValueError):
        raise BadHeader(f"its {SHARDING_INFO} metadata is missing or not JSON") from None
    if not isinstance(info, dict) or set(info) != set(header.tensors):
        raise BadHeader(f"its {SHARDING_INFO} does not name exactly its tensors")
    chunks = {}
    for key, entry in header.tensors.items():
        offsets = info[key].get("saved_offsets") if isinstance(info[key], dict) else None
        if (not isinstance(offsets, list) or len(offsets) != len(entry.shape)
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in offsets)):
            raise BadHeader(f"tensor {key!r}: saved_offsets {offsets!r} do not place it in its tensor")
        chunks[key] = Chunk(name, entry.dtype, tuple(offsets), entry.shape)
    return chunks


def _tiling_problem(parts: list[Chunk]) -> str | None:
    """The chunks of one tensor must share dtype and rank and cover the whole exactly once."""
    if len({(p.dtype, len(p.shape)) for p in parts}) != 1:
        return "its shards disagree on dtype or rank"
    whole = list(_whole(parts))
    for a, b in itertools.combinations(parts, 2):
        if _overlap(a, b):
            return f"the shards in {a.file} and {b.file} overlap"
    if sum(math.prod(p.shape) for p in parts) != math.prod(whole):
        return f"its shards do not cover the whole shape {whole}"
    return None


def _overlap(a: Chunk, b: Chunk) -> bool:
    return all(
        a.offsets[d] < b.offsets[d] + b.shape[d] and b.offsets[d] < a.offsets[d] + a.shape[d]
        for d in range(len(a.shape))
    )

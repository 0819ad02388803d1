"""Durable files: every file trainwright writes goes through here, so a crash at any moment leaves the
old content or the new one, never half of either (write a temporary file beside the target, fsync
it, rename it over the target, fsync the folder). Files get the usual mode (0644 under umask 022)
whatever wrote them (safetensors creates its files 0600). The run dir's JSON files are valid JSON for
any reader (a non-finite number is written as null); only checkpoint internals keep Python's NaN."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from safetensors import SafetensorError

# What a failed write raises: OSError, or safetensors' own error wrapping one ("I/O error: No space left").
WRITE_ERRORS = (OSError, SafetensorError)

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file


def warn(message: str) -> None:
    """A warning for the user on stderr (training goes on)."""
    print(f"trainwright: {message}", file=sys.stderr, flush=True)


def fsync_path(path: Path) -> None:
    """Flush a file or a folder (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; on success it replaces `path` durably, on an
    error it is removed and `path` is left as it was."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """`open(path, mode)` whose content appears at `path` only once the block finished without error."""
    with atomic_path(path) as tmp, tmp.open(mode, **({} if "b" in mode else {"encoding": "utf-8"})) as file:
        yield file


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_open(path) as file:
        file.write(text)


def json_safe(data: Any) -> Any:
    """`data` with every non-finite float (NaN, inf) as None, so it is valid JSON (null)."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: json_safe(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(value) for value in data]
    return data


def json_line(data: Any) -> str:
    """One JSON line (non-finite numbers as null)."""
    return json.dumps(json_safe(data), allow_nan=False) + "\n"


def _dump_json(data: Any, file: IO[str], exact: bool = False) -> None:
    """`exact`: keep non-finite floats as Python writes them (state that only trainwright reads back)."""
    if exact:
        json.dump(data, file, indent=1, sort_keys=True)
    else:
        json.dump(json_safe(data), file, indent=1, sort_keys=True, allow_nan=False)


def write_json(path: Path, data: Any) -> None:
    """Write JSON to a new file inside a folder that is made durable as a whole (a checkpoint's, whose
    manifest step fsyncs every file before the folder gets its final name); values are kept exactly, so
    NaN stays NaN."""
    with path.open("w", encoding="utf-8") as file:
        _dump_json(data, file, exact=True)


def append_whole(fd: int, data: bytes) -> None:
    """Append `data` to a file opened with O_APPEND, all of it or nothing: if a write fails (a full disk)
    the file is cut back to where `data` began and the OSError is raised."""
    start = os.fstat(fd).st_size
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
    except OSError:
        os.ftruncate(fd, start)
        raise


def normalize_mode(path: Path) -> None:
    """Give a file written by a library the usual mode (safetensors creates its files 0600)."""
    os.chmod(path, FILE_MODE)


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace `path` with new JSON content so a reader sees the old file or the new one, never half
    (a non-finite number is written as null)."""
    with atomic_open(path) as file:
        _dump_json(data, file)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder `tmp` to `final` durably; an existing `final` is swapped out, then deleted."""
    replaced = final.with_name(f"{tmp.name}-replaced")
    if final.exists():
        os.replace(final, replaced)
    os.replace(tmp, final)
    fsync_path(final.parent)
    shutil.rmtree(replaced, ignore_errors=True)

"""Durable files: every file trainwright writes goes through here, so a crash at any moment leaves the
old content or the new one, never half of either (write a temporary file beside the target, fsync
it, rename it over the target, fsync the folder)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".tmp"


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


def _dump_json(data: Any, file: IO[str]) -> None:
    json.dump(data, file, indent=1, sort_keys=True)


def write_json(path: Path, data: Any) -> None:
    """Write JSON to a new file inside a folder that is made durable as a whole (a checkpoint's, whose
    manifest step fsyncs every file before the folder gets its final name)."""
    with path.open("w", encoding="utf-8") as file:
        _dump_json(data, file)


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace `path` with new JSON content so a reader sees the old file or the new one, never half."""
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

"""Durable files: every file trainwright writes goes through here, so a crash at any moment leaves the
old content or the new one, never half of either (write a temporary file beside the target, fsync
it, rename it over the target, fsync the folder). Files get the usual mode (0644 under umask 022)
whatever wrote them (safetensors creates its files 0600). The run dir's JSON files are valid JSON for
any reader (a non-finite number is written as null); only checkpoint internals keep Python's NaN.

No file is ever written through a symbolic link: a new file is created with O_EXCL|O_NOFOLLOW (a link,
even a dangling one, where it is to be made is removed or refused, never followed), and the rename of
an atomic write replaces a link at the target rather than the file it points to. Folders may be links
(a run dir or `runs/` on another disk is a user's choice)."""

from __future__ import annotations

import contextlib
import errno
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

from trainwright.errors import UserError

# What a failed write raises: OSError, or safetensors' own error wrapping one ("I/O error: No space left").
WRITE_ERRORS = (OSError, SafetensorError)

TMP_SUFFIX = ".tmp"

# Errors of writing a file (a full disk, a read-only folder): an atomic write names its target in them,
# not its temporary file (nor nothing, as a failed write names no file).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM}


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


def create_new(path: Path) -> int:
    """A file descriptor open for writing on a new file at `path`; anything already there, a symbolic link
    included (even one pointing nowhere), raises FileExistsError and is left as it is."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)


def open_new(path: Path, mode: str = "w") -> IO[Any]:
    """`open(path, mode)` for a file that must not exist yet (see create_new)."""
    return os.fdopen(create_new(path), mode, **({} if "b" in mode else {"encoding": "utf-8"}))


def open_append(path: Path) -> int:
    """A file descriptor appending to `path` (made when missing); a symbolic link there is refused with a
    UserError, never followed."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise UserError(
            f"{path} is a symbolic link; trainwright does not write through links (remove it; what it points to is "
            "left as it is)"
        ) from None


def check_new_output(path: Path, option: str) -> None:
    """Refuse an output file the user named (`option` is its flag) that is there already, as a file, a
    folder or a symbolic link (even a dangling one), or whose folder is missing or not writable."""
    if os.path.islink(path):
        raise UserError(
            f"{option} {path} is a symbolic link; trainwright neither writes through it nor replaces it (choose "
            "another name or remove the link)"
        )
    if path.exists():
        raise UserError(f"{option} {path} exists; trainwright does not overwrite it (choose another name or remove it)")
    if not path.parent.is_dir():
        raise UserError(f"{option} {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: folder {path.parent} is not writable")


def remove_tree(path: Path) -> None:
    """Remove a folder and what it holds, or a file or a link there (the link only, never what it points
    to); nothing there is fine."""
    if os.path.islink(path) or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _settle(tmp: Path) -> None:
    """Give a finished temporary file the usual mode and flush it (a link put in its place is refused)."""
    fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, FILE_MODE)
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to, already made as a new empty file (a leftover of a
    crash or a link there is removed first, never written through); on success it replaces `path`
    durably (a link at `path` is replaced, what it points to is untouched), on an error it is removed and
    `path` is left as it was. A write error (a full disk, a read-only folder) about the temporary file or
    about no file names `path` instead."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.close(create_new(tmp))
            yield tmp
            _settle(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_path(path.parent)
    except OSError as exc:
        if exc.errno in _WRITE_ERRNOS and exc.filename in (None, str(tmp), tmp):
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """`open(path, mode)` whose content appears at `path` only once the block finished without error."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as file:
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
    with open_new(path) as file:
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
    if os.path.lexists(final):
        os.replace(final, replaced)
    os.replace(tmp, final)
    fsync_path(final.parent)
    remove_tree(replaced)

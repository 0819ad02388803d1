"""Durable files: every file trainwright writes goes through here, so a crash at any moment leaves the
old content or the new one, never half of either (write a temporary file beside the target, fsync
it, rename it over the target, fsync the folder). Files get the usual mode (0644 under umask 022)
whatever wrote them (safetensors creates its files 0600). The run dir's JSON files are valid JSON for
any reader (a non-finite number is written as null); only checkpoint internals keep Python's NaN.

No file is ever written through a symbolic link: a new file is created with O_EXCL|O_NOFOLLOW (a link,
even a dangling one, where it is to be made is removed or refused, never followed), and the rename of
an atomic write replaces a link at the target rather than the file it points to. Folders may be links
(a run dir or `runs/` on another disk is a user's choice).

Every temporary file or folder is made here (`temporary_beside`), with a name nothing else holds: made with
O_EXCL and a random part (`.NAME.XXXXXXXX.tmp`, beside its target so the rename is atomic), so a user's
file is never taken for one; trainwright removes only temporaries it made itself (and, in the run dir's
own folders, what a killed run of its own left)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from safetensors import SafetensorError

from trainwright.errors import UserError

# What a failed write raises: OSError, or safetensors' own error wrapping one ("I/O error: No space left").
WRITE_ERRORS = (OSError, SafetensorError)

TMP_SUFFIX = ".tmp"
_NAME_KEPT = 200  # of the target's name in its temporary's (a file name has at most 255 bytes)

# Errors of writing a file (a full disk, a read-only folder): an atomic write names its target in them,
# not its temporary file (nor nothing, as a failed write names no file).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM}


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file
DIR_MODE = 0o777 & ~_umask()  # and mkdir a new folder


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
    return os.fdopen(create_new(path), mode, encoding=None if "b" in mode else "utf-8")


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


def temporary_beside(path: Path, folder: bool = False) -> Path:
    """A new empty file (or, with `folder`, folder) beside `path`, named `.NAME.XXXXXXXX.tmp` with a random
    part and made with O_EXCL (mode 0600, or 0700), so it is trainwright's own: nothing else held that name."""
    prefix = f".{path.name[:_NAME_KEPT]}."
    if folder:
        return Path(tempfile.mkdtemp(TMP_SUFFIX, prefix, path.parent))
    fd, name = tempfile.mkstemp(TMP_SUFFIX, prefix, path.parent)
    os.close(fd)
    return Path(name)


def is_temporary(name: str) -> bool:
    """Whether `name` has the form of temporary_beside's names (a killed writer's leftover, in a folder that
    only trainwright writes)."""
    return re.fullmatch(rf"\..+\.[a-z0-9_]{{8}}{re.escape(TMP_SUFFIX)}", name) is not None


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def rename_new(source: Path, target: Path) -> None:
    """Rename `source` to `target` only if nothing is at `target` (not even a dangling link): FileExistsError
    otherwise, and nothing there is touched. Atomic where the system has renameat2 (Linux); elsewhere
    checked just before an ordinary rename."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):  # (a file system without the flag: the fallback below)
            raise OSError(code, os.strerror(code), str(target))
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)


def _appeared(path: Path) -> UserError:
    return UserError(
        f"{path} was made by something else while trainwright wrote it; it is left as it is and nothing was "
        "written (choose another name)"
    )


@contextlib.contextmanager
def atomic_path(path: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a new empty temporary file beside `path` to write to (see temporary_beside); on success it
    replaces `path` durably (a link at `path` is replaced, what it points to is untouched) or, unless
    `replace`, takes the name only if nothing is there (a UserError otherwise); on an error it is removed
    and `path` is left as it was. A write error (a full disk, a read-only folder) about the temporary file
    or about no file names `path` instead."""
    tmp: Path | None = None
    try:
        tmp = temporary_beside(path)
        try:
            yield tmp
            _settle(tmp)
            if replace:
                os.replace(tmp, path)
            else:
                rename_new(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_path(path.parent)
    except FileExistsError as exc:
        if replace or exc.filename != str(path):
            raise
        raise _appeared(path) from None
    except OSError as exc:
        if exc.errno in _WRITE_ERRNOS and exc.filename in (None, str(tmp), tmp, str(path.parent)):
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", replace: bool = True) -> Iterator[IO[Any]]:
    """`open(path, mode)` whose content appears at `path` only once the block finished without error (see
    atomic_path for `replace`)."""
    with atomic_path(path, replace) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as file:
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


def publish_dir(tmp: Path, final: Path) -> None:
    """Give a finished temporary folder (temporary_beside's, mode 0700) the usual mode and the name `final`,
    which must still be free (a UserError otherwise; nothing there is touched)."""
    os.chmod(tmp, DIR_MODE)
    fsync_path(tmp)
    try:
        rename_new(tmp, final)
    except FileExistsError:
        raise _appeared(final) from None
    fsync_path(final.parent)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder `tmp` to `final` durably; an existing `final` is swapped out, then deleted."""
    replaced = final.with_name(f"{tmp.name}-replaced")
    if os.path.lexists(final):
        os.replace(final, replaced)
    os.replace(tmp, final)
    fsync_path(final.parent)
    remove_tree(replaced)

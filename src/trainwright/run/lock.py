"""One `train` at a time per run dir: an exclusive lock held by the main process for the whole command.

The lock is a file beside the run dir (`.<name>.trainwright-lock`, so it exists before the run dir does
and stays put when --restart renames the run dir), locked with flock(2) and removed on release. It
names its holder (pid, host, since when) for the message a second command gets.

What is guaranteed:
  * On one machine, and on shared file systems whose locks work across machines (NFSv4, NFSv3 with
    lockd, Lustre mounted with `flock`, GPFS, BeeGFS): at most one holder. The kernel (or the NFS
    server's lease) drops the lock of a process that dies, even by SIGKILL; the next command takes it
    over and says whose it was.
  * On file systems whose locks are local to a machine (NFS mounted `nolock` or `local_lock=all`,
    Lustre with `localflock`): the holder refreshes the file's time every HEARTBEAT seconds, and a
    command on another machine is refused while that is fresher than STALE_AFTER seconds. Two commands
    started within the same moment on two machines can still both run there.
  * Where flock is not supported at all, training is refused with a message.

Only the holder itself holds the lock: a child it forks (a DataLoader worker) closes its copy of the
lock's file descriptor at once (flock belongs to the open file, which fork shares), so the lock ends
with the holder even while such children linger; a program it starts (exec) never gets the descriptor.

The lock file is never followed as a symbolic link (the run dir's parent may be a shared folder, and
writing the holder record through a link would overwrite the file it points to): a link there is
refused with a message.

The holder record is written through the locked file descriptor, not with files.py's atomic rename
(renaming would replace the locked file)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from trainwright.distributed.processes import launch_rank
from trainwright.errors import UserError
from trainwright.run.directory import RunDir
from trainwright.run.files import warn

HEARTBEAT = 30.0  # seconds between refreshes of the lock file's time by its holder
STALE_AFTER = 120.0  # a record from another machine older than this is from a holder that is gone

_held: set[RunLock] = set()  # the locks this process holds


def _release_in_child() -> None:
    """In a forked child: close its copies of the held locks' file descriptors, so that the lock does not
    outlive the holder, and forget them, so that the child never removes the holder's lock file."""
    for lock in _held:
        lock.forget()
    _held.clear()


os.register_at_fork(after_in_child=_release_in_child)


def hold(run: RunDir) -> contextlib.AbstractContextManager:
    """The run dir's lock for a `train` command: taken by the main process of a launch (rank 0, known
    from the launcher's variables before any process group exists), before anything is read or planned.
    The other processes rely on it; if it is refused, rank 0 exits with the message and the launcher
    (torchrun/accelerate launch) ends the others."""
    return RunLock(run) if launch_rank() == 0 else contextlib.nullcontext()


class RunLock:
    """`with RunLock(run): ...` holds the run dir's lock; a second holder is refused with a UserError."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.path = run.lock_file
        self._fd: int | None = None
        self._made: list[Path] = []  # folders made to hold the lock file, removed again if left empty
        self._stop = threading.Event()

    def __enter__(self) -> RunLock:
        self.run.check_location(restart=False)  # a folder that cannot be made or written is said as such
        self._make_parent()
        try:
            self._acquire()
            _held.add(self)
            threading.Thread(target=self._heartbeat, name="trainwright-lock", daemon=True).start()
        except BaseException:  # a refusal, or a signal while taking it: a lock taken is released
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        _held.discard(self)
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still locked, so no one can lock the old file meanwhile
            os.close(self._fd)
            self._fd = None
        self._remove_made_folders()

    def forget(self) -> None:
        """Let go of the lock without releasing it: in a forked child, whose parent holds it. (The child has no
        heartbeat thread; `_stop` is not touched, as its lock may have been held by that thread at the fork.)"""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._made = []

    def _make_parent(self) -> None:
        missing = [p for p in [self.path.parent, *self.path.parent.parents] if not p.exists()]
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except OSError as exc:
                raise UserError(
                    f"--run-dir {self.run.path}: cannot create the folder {folder}: {exc.strerror}"
                ) from None
            self._made.append(folder)

    def _remove_made_folders(self) -> None:
        for folder in reversed(self._made):
            try:
                folder.rmdir()
            except OSError:  # the run dir (or something else) is in it now
                break
        self._made = []

    def _acquire(self) -> None:
        """Lock the lock file (self._fd, once it is this command's) and write the holder record into it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise UserError(
                        f"cannot lock the run dir {self.run.path}: its lock file {self.path} is a symbolic link "
                        f"(to {os.readlink(self.path)}), which trainwright does not write through; remove the link "
                        "(what it points to is left as it is)"
                    ) from None
                raise UserError(
                    f"cannot lock the run dir {self.run.path}: cannot write {self.path}: {exc.strerror}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                record = _read(fd)
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise UserError(self._in_use(record)) from None
                raise UserError(
                    f"cannot lock the run dir {self.run.path}: this file system does not support file locks "
                    f"({exc.strerror}); use a run dir on a file system that does (see the README, 'Run dir lock')"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its holder removed the file on release just before we locked it: lock the new one
        previous = _read(fd)
        if previous:
            self._check_other_machine(fd, previous)
            warn(f"taking over the lock of {self.run.path} from {_describe(previous)}, {_gone(previous, fd)}")
        self._fd = fd
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)

    def _in_use(self, record: dict) -> str:
        """The refusal: the holder, named only where the record names a live one."""
        if _running_here(record) is False:
            return (
                f"{self.run.path} is in use: its lock is held, but not by its recorded holder ({_describe(record)}), "
                f"which is no longer running; another process holds it (`fuser -v {self.path}` names it): wait for "
                "it to end or stop it, or choose another --run-dir"
            )
        return (
            f"{self.run.path} is in use by another trainwright run ({_describe(record)}); wait for it to end or stop "
            "it, or choose another --run-dir"
        )

    def _check_other_machine(self, fd: int, previous: dict) -> None:
        """A fresh record from another machine means its holder may be alive where the lock does not reach."""
        age = time.time() - os.fstat(fd).st_mtime
        if previous.get("host") not in (None, socket.gethostname()) and age < STALE_AFTER:
            os.close(fd)
            raise UserError(
                f"{self.run.path} is in use by another trainwright run ({_describe(previous)}, seen {age:.0f} s ago). "
                f"If that run was killed, run again in {STALE_AFTER - age:.0f} s or delete {self.path}; if it is "
                "alive, this file system's locks do not reach across machines (see the README, 'Run dir lock')"
            )

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            fd = self._fd
            if fd is not None:
                try:
                    os.utime(fd)
                except OSError:
                    pass  # the run goes on; only another machine's takeover check would be affected


def release_held() -> None:
    """Release every lock this process holds: for a process about to leave with os._exit, which runs no
    `with` block's exit."""
    for lock in list(_held):
        lock.__exit__(None, None, None)


def holder(run: RunDir) -> str | None:
    """Who holds `run`'s lock now ('pid N on host H since T'), or None when no process does. Only looks:
    the lock is taken for an instant at most, never kept."""
    try:
        fd = os.open(run.lock_file, os.O_RDONLY)
    except OSError:  # no lock file: no holder
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return _describe(_read(fd)) if exc.errno in (errno.EAGAIN, errno.EACCES) else None
    else:
        return None
    finally:
        os.close(fd)  # also releases the shared lock, if it was granted


def _read(fd: int) -> dict:
    """The holder record in a lock file ({} when empty or unreadable)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(record: dict) -> str:
    if not record:
        return "holder unknown"
    return f"pid {record.get('pid')} on host {record.get('host')} since {record.get('since')}"


def _running_here(record: dict) -> bool | None:
    """Whether the record's process runs on this machine (a zombie does not); None when the record cannot
    tell (another host, no pid)."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or type(pid) is not int or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _gone(previous: dict, fd: int) -> str:
    """What became of the previous holder, whose lock this command could take."""
    running = _running_here(previous)
    if running is False:
        return "which ended without releasing it"
    if running and previous["pid"] == os.getpid():  # a container started again: its main process has pid 1 again
        return f"which no longer holds it (pid {previous['pid']} is this command's now)"
    if running:
        return (
            f"which no longer holds it (pid {previous['pid']} is running here, but not as the lock's holder: the pid "
            "is another process's now, or the record is from another container)"
        )
    if previous.get("host") not in (None, socket.gethostname()):
        age = time.time() - os.fstat(fd).st_mtime
        return f"which no longer holds it (its record was last refreshed {age:.0f} s ago)"
    return "which no longer holds it"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.lstat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False

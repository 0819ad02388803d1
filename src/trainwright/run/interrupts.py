"""Signals outside training's own handling (stopping.py): from a command's first instant (its imports
included) to its end, a stop signal (SIGTERM, SIGUSR1, SIGHUP) raises `Stopped` and Ctrl-C (SIGINT)
raises KeyboardInterrupt where the program is, so every `with` and `finally` on the way out runs (the run
dir's lock is released, a half-written file removed) and the CLI says it once, with its exit code. Nothing
heavy is imported here, so the command installs this before anything else.

DataLoader workers (forked from a training process, so holding its handlers) ignore the stop signals
(`quiet_worker`): the training process stops them, and they must not say a word of their own. Ignoring
SIGTERM means multiprocessing's own exit handler, which ends daemonic children with SIGTERM and then waits
for them, would wait forever for workers still up at exit (a run that ended in an error raised while their
loader was in use): `end_workers_at_exit` ends them with SIGKILL first."""

from __future__ import annotations

import atexit
import contextlib
import signal
import sys
from collections.abc import Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)
EXIT_INTERRUPTED = 130  # Ctrl-C


class Stopped(BaseException):
    """A stop signal arrived (a BaseException, like KeyboardInterrupt, so no `except Exception` on the way
    swallows it)."""

    def __init__(self, signum: int) -> None:
        self.name = signal.Signals(signum).name
        super().__init__(self.name)


class _Received:
    """What arrived while the handlers were installed: the CLI reports it even if a library swallowed the
    exception it raised (one raised inside a __del__ is only printed as 'ignored')."""

    interrupted = False
    stopped: Stopped | None = None

    def first(self) -> KeyboardInterrupt | Stopped | None:
        """The signal that arrived (a stop signal over Ctrl-C), as the exception it raised; None: none."""
        return self.stopped or (KeyboardInterrupt() if self.interrupted else None)


received = _Received()


def _stop(signum: int, _frame: Any) -> None:
    for sig in STOP_SIGNALS:  # the first counts; the way out (a lock's release, a file's removal) goes on
        signal.signal(sig, signal.SIG_IGN)
    received.stopped = Stopped(signum)
    raise received.stopped


def _interrupt(_signum: int, _frame: Any) -> None:
    received.interrupted = True
    raise KeyboardInterrupt


def install() -> None:
    """From now on (main thread), a stop signal raises Stopped and Ctrl-C KeyboardInterrupt; a signal this
    process was started ignoring (`nohup`'s SIGHUP, a shell's background job's SIGINT) stays ignored."""
    handlers = {**{sig: _stop for sig in STOP_SIGNALS}, signal.SIGINT: _interrupt}
    for sig, handler in handlers.items():
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, handler)


@contextlib.contextmanager
def stops_raise() -> Iterator[None]:
    """While inside (main thread), the first stop signal raises Stopped where the program is (later ones
    are ignored); the handlers before are restored on the way out."""
    previous = {sig: signal.signal(sig, _stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def say(message: str) -> None:
    """Print a closing message on stderr, once per launch (its main process); a closed terminal is fine."""
    from trainwright.distributed.processes import launch_rank  # (not before the handlers are in place: dataclasses)

    if launch_rank() == 0:
        with contextlib.suppress(OSError):
            print(message, file=sys.stderr, flush=True)


def ending(signalled: KeyboardInterrupt | Stopped, argv: list[str]) -> int:
    """Say how a signal outside a training loop (which says so itself) ended the command of `argv`, and
    return its exit code: 130 for Ctrl-C, 75 for a stop signal."""
    from trainwright.errors import EXIT_PREEMPTED
    if isinstance(signalled, KeyboardInterrupt):
        say("trainwright: interrupted")
        return EXIT_INTERRUPTED
    command = next((word for word in argv if not word.startswith("-")), "")
    if command == "train":
        say(f"trainwright: got {signalled.name} before training started; stopping (nothing to save yet)")
    else:
        say(
            f"trainwright: got {signalled.name}; stopped{f' {command}' if command else ''} (run the same command again)"
        )
    return EXIT_PREEMPTED


_workers_ended_at_exit = False


def end_workers_at_exit() -> None:
    """Register, once, an exit handler that kills the daemonic children (DataLoader workers) still up at exit.
    Registered after multiprocessing's own (it is imported by then), so it runs before it."""
    global _workers_ended_at_exit
    if not _workers_ended_at_exit:
        atexit.register(_kill_daemonic_children)
        _workers_ended_at_exit = True


def _kill_daemonic_children() -> None:
    import multiprocessing

    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join()


def quiet_worker(_worker_id: int) -> None:
    """A DataLoader's worker_init_fn: the worker ignores the stop signals (the terminal's SIGHUP and Slurm's
    SIGTERM reach every process of the group); its training process stops and ends it."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)

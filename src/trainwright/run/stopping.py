"""Stop requests: SIGTERM/SIGUSR1/SIGHUP to any process, or its launcher's death, make every process stop
at the same step.

With one process the flag is read after every step. With several, they agree on it through a small
all-reduce that also carries the slowest process's seconds per step, so the next check comes after
about `CHECK_EVERY_SECONDS` of training: a collective about ten times a second, never once per step of
a small model, and still after every step of a model whose steps take longer than that. A signal that
arrives in the last fraction of a second of a run may let it complete instead (exit 0).

torchrun starts each worker in a session of its own, so a launcher killed by SIGKILL (a job runner's
timeout, a container stop, the OOM killer) takes no worker with it. Its workers therefore watch it: a
thread checks every `WATCH_SECONDS` whether the process's parent is still the launcher. When it is not
while training, it requests a stop as a signal does (the workers' process group does not need the
launcher, so they still agree on a step); while the processes connect (they meet at the launcher's
store), it ends the process, which would otherwise wait there for the others until a timeout. A polling
thread rather than prctl(PR_SET_PDEATHSIG): that fires when the parent's *thread* that started the
worker ends, not the parent, is Linux-only, and would arrive as a signal that says nothing of the
launcher. Only the main process prints.

A callback may ask the run to end as completed (`request_finish`, exit 0). The same agreement carries
that request, with the lowest asking rank, so every process ends at the same step; a second reduction, at
that step only, brings the asking process's callback name and reason to every process (as bytes in a
tensor: nothing is pickled). A stop signal at the same agreement wins: the run stops to be resumed.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from trainwright.distributed.launcher import gone_launcher_store, launcher_pid
from trainwright.distributed.processes import Processes, launch_rank
from trainwright.errors import EXIT_PREEMPTED
from trainwright.run.interrupts import STOP_SIGNALS
from trainwright.run.lock import release_held

CHECK_EVERY_SECONDS = 0.1
WATCH_SECONDS = 0.5  # how often a worker checks that its launcher is still there
LAUNCHER_GONE = 256  # the stop request of a worker whose launcher is gone (beyond every signal number)
FINISH_TEXT_BYTES = 2048  # a callback's name and reason, as UTF-8, travel between processes cut to this


class LauncherWatch:
    """Whether the torchrun agent that started this worker is still its parent, checked every WATCH_SECONDS
    by a daemon thread, which calls `on_gone` (when set) once it is not."""

    def __init__(self, launcher: int) -> None:
        self.launcher = launcher
        self.on_gone: Callable[[], None] | None = None
        threading.Thread(target=self._run, name="trainwright-launcher", daemon=True).start()

    def gone(self) -> bool:
        """Whether this process's parent is no longer the launcher (it was re-parented when that died)."""
        return os.getppid() != self.launcher

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_SECONDS)
            action = self.on_gone
            if action is not None and self.gone():
                self.on_gone = None
                action()


_watch: LauncherWatch | None = None


def launcher_watch() -> LauncherWatch | None:
    """This process's watch of its launcher, started on first use; None outside torchrun."""
    global _watch
    if _watch is None and (launcher := launcher_pid()) is not None:
        _watch = LauncherWatch(launcher)
    return _watch


@contextlib.contextmanager
def ending_without_launcher() -> Iterator[None]:
    """While inside (the processes connect at the launcher's store), a launcher that dies ends this process
    at once: nothing is saved yet, and it would wait for the others until a timeout, holding the run dir."""
    watch = launcher_watch()
    if watch is None:
        yield
        return
    if (store := gone_launcher_store()) is not None:  # gone before this process recorded its parent
        _end_without(f"the launcher is gone (its store at {store} refuses connections)")
    watch.on_gone = lambda: _end_without(f"the launcher (pid {watch.launcher}) is gone")
    try:
        yield
    finally:
        watch.on_gone = None


def _end_without(why: str) -> None:
    """End this process now, saying `why` (from the watch's thread too: the main one may be blocked in the
    connection), the run dir's lock released."""
    release_held()
    if launch_rank() == 0:
        with contextlib.suppress(OSError):
            print(f"trainwright: {why} before training started; stopping (nothing to save yet)", file=sys.stderr,
                  flush=True)
    os._exit(EXIT_PREEMPTED)


class StopSignals:
    """Catches the stop requests while training and tells every process, at the same step, to stop."""

    def __init__(self, processes: Processes) -> None:
        self.processes = processes
        self.received = 0  # the stop request that arrived here: a signal number or LAUNCHER_GONE
        self.finish: tuple[str, str] | None = None  # a callback's request here to end the run: (its name, why)
        self.finished_by: tuple[str, str] | None = None  # the request the processes agreed to end the run on
        self.pending = False  # a request (a stop signal, the launcher's death, a callback's) arrived here
        self.stopping = False  # whether the processes agreed to stop
        self.finishing = False  # the last step is done: a stop request no longer changes anything
        self._said = False  # whether the main process has said why it stops
        self._watch = launcher_watch()  # of the torchrun agent that started this process (None: none)
        self._next_check = 0
        self._since: tuple[int, float] | None = None  # (step, time) of the last agreement

    @contextlib.contextmanager
    def caught(self) -> Iterator[None]:
        """While inside, a stop signal, or the launcher's death, only sets the flag (a second one changes
        nothing)."""

        def on_signal(signum: int, _frame: Any) -> None:
            self._request(signum, f"got {signal.Signals(signum).name}")

        previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
        if self._watch is not None:
            self._watch.on_gone = lambda: self._request(LAUNCHER_GONE, self._launcher_gone_message())
        try:
            yield
        finally:
            if self._watch is not None:
                self._watch.on_gone = None
            for sig, handler in previous.items():
                # Once stopping (here or on another process), ignore further signals so they cannot turn the
                # exit code 75 into a kill: the launcher may signal every worker as soon as one has exited.
                # (Python resets its own handlers to the default while it shuts down, but keeps SIG_IGN.)
                signal.signal(sig, signal.SIG_IGN if self.stopping or self.received else handler)

    def _launcher_gone_message(self) -> str:
        return f"the launcher (pid {self._watch.launcher}) is gone" if self._watch else "the launcher is gone"

    def _request(self, request: int, why: str) -> None:
        # The flag first: a second signal can interrupt the print (the launcher forwards the signal that
        # Slurm also sent to the whole process group) and must find it set, so the message comes once.
        first, self.received, self.pending = not self.received, request, True
        if first:
            self._say(why)

    def request_finish(self, name: str, why: str) -> None:
        """Callback `name` asks to end the run as completed (the first request counts)."""
        if self.finish is None:
            self.finish, self.pending = (name, why.replace("\0", "")), True

    def _say(self, why: str) -> None:
        """The main process says once why the run stops (or that it finishes first)."""
        if self._said or not self.processes.is_main:
            return
        self._said = True
        then = "finishing the run first" if self.finishing else "saving a checkpoint after this step"
        try:
            print(f"trainwright: {why}; {then}", file=sys.stderr, flush=True)
        except OSError:  # a closed terminal (SIGHUP), a pipe whose reader is gone: the rest goes nowhere, so
            sys.stdout = sys.stderr = open(os.devnull, "w")  # that printing cannot turn the stop into a crash

    def stop_at(self, step: int) -> bool:
        """Whether to stop after optimizer step `step` (to be resumed); the same answer on every process.
        When the processes agree to end the run as a callback asked instead, this is false and
        `finished_by` is set (on every process)."""
        self.stopping = self._agreed(step)
        return self.stopping

    def next_agreement(self, step: int) -> float:
        """The first step after `step` at which processes agree on stopping (`stop_at` asks the others then);
        inf for one process, whose answer is `received` itself."""
        return math.inf if self.processes.world_size == 1 else max(self._next_check, step + 1)

    def _agreed(self, step: int) -> bool:
        processes = self.processes
        if processes.world_size == 1:
            if self.finish is not None and not self.received:
                self.finished_by = self.finish
            return bool(self.received)
        if step < self._next_check:
            return False
        now = time.perf_counter()
        seconds_per_step = (now - self._since[1]) / max(step - self._since[0], 1) if self._since else 0.0
        finisher = processes.world_size - processes.rank if self.finish is not None else 0  # the max: the lowest rank
        mine = torch.tensor([float(self.received), seconds_per_step, float(finisher)], device=processes.device)
        request, slowest, finisher = processes.max(mine).tolist()
        self._since = (step, now)
        self._next_check = step + max(1, int(CHECK_EVERY_SECONDS / slowest) if slowest > 0 else 1)
        if request and not self.received:  # another process's request: the main process says it
            self._say(self._elsewhere(int(request)))
        if not request and finisher:
            self.finished_by = self._finish_of(processes.world_size - int(finisher))
        return request > 0

    def _finish_of(self, rank: int) -> tuple[str, str]:
        """The callback name and reason of process `rank`'s finish request, on every process (a collective)."""
        text = b""
        if rank == self.processes.rank:
            assert self.finish is not None  # this process asked to finish
            name, why = self.finish
            text = f"{name}\0{why}".encode()[:FINISH_TEXT_BYTES]
        codes = torch.zeros(FINISH_TEXT_BYTES, dtype=torch.float32, device=self.processes.device)
        codes[: len(text)] = torch.tensor(list(text), dtype=torch.float32)
        text = bytes(int(code) for code in self.processes.max(codes).tolist()).rstrip(b"\0")
        name, _, why = text.decode(errors="ignore").partition("\0")
        return name, why

    def _elsewhere(self, request: int) -> str:
        """Why another process asked to stop."""
        if request != LAUNCHER_GONE:
            return f"another process got {signal.Signals(request).name}"
        if self._watch is not None and self._watch.gone():  # the same launcher, noticed there first
            return self._launcher_gone_message()
        return "another process's launcher is gone"

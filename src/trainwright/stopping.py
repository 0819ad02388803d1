"""Stop requests: SIGTERM/SIGUSR1/SIGHUP to any process, or its launcher's death, make every process stop
at the same step.

With one process the flag is read after every step. With several, they agree on it through a small
all-reduce that also carries the slowest process's seconds per step, so the next check comes after
about `CHECK_EVERY_SECONDS` of training: a collective about ten times a second, never once per step of
a small model, and still after every step of a model whose steps take longer than that. A signal that
arrives in the last fraction of a second of a run may let it complete instead (exit 0).

torchrun starts each worker in a session of its own, so a launcher killed by SIGKILL (a job runner's
timeout, a container stop, the OOM killer) takes no worker with it. Its workers therefore watch it: a
thread checks every `WATCH_SECONDS` whether the process's parent is still the launcher, and when it is
not, requests a stop as a signal does (the workers' process group does not need the launcher, so they
still agree on a step). A polling thread rather than prctl(PR_SET_PDEATHSIG): that fires when the
parent's *thread* that started the worker ends, not the parent, is Linux-only, and would arrive as a
signal that says nothing of the launcher. Only the main process prints.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from trainwright.launcher import launcher_pid
from trainwright.processes import Processes

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)
CHECK_EVERY_SECONDS = 0.1
WATCH_SECONDS = 0.5  # how often a worker checks that its launcher is still there
LAUNCHER_GONE = 256  # the stop request of a worker whose launcher is gone (beyond every signal number)


class StopSignals:
    """Catches the stop requests while training and tells every process, at the same step, to stop."""

    def __init__(self, processes: Processes) -> None:
        self.processes = processes
        self.received = 0  # the stop request that arrived here: a signal number or LAUNCHER_GONE
        self.stopping = False  # whether the processes agreed to stop
        self.finishing = False  # the last step is done: a stop request no longer changes anything
        self._said = False  # whether the main process has said why it stops
        self._launcher = launcher_pid()  # the torchrun agent that started this process (None: none)
        self._next_check = 0
        self._since: tuple[int, float] | None = None  # (step, time) of the last agreement

    @contextlib.contextmanager
    def caught(self) -> Iterator[None]:
        """While inside, a stop signal, or the launcher's death, only sets the flag (a second one changes
        nothing)."""

        def on_signal(signum: int, _frame: Any) -> None:
            self._request(signum, f"got {signal.Signals(signum).name}")

        previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
        watched = threading.Event()
        if self._launcher is not None:
            threading.Thread(target=self._watch, args=(watched,), name="trainwright-launcher", daemon=True).start()
        try:
            yield
        finally:
            watched.set()
            for sig, handler in previous.items():
                # Once stopping (here or on another process), ignore further signals so they cannot turn the
                # exit code 75 into a kill: the launcher may signal every worker as soon as one has exited.
                # (Python resets its own handlers to the default while it shuts down, but keeps SIG_IGN.)
                signal.signal(sig, signal.SIG_IGN if self.stopping or self.received else handler)

    def _watch(self, done: threading.Event) -> None:
        """Until `done`: request a stop once the launcher is gone."""
        while not done.wait(WATCH_SECONDS):
            if self._launcher_gone():
                self._request(LAUNCHER_GONE, f"the launcher (pid {self._launcher}) is gone")
                return

    def _launcher_gone(self) -> bool:
        """Whether this process's parent is no longer its launcher (it was re-parented when that died)."""
        return self._launcher is not None and os.getppid() != self._launcher

    def _request(self, request: int, why: str) -> None:
        # The flag first: a second signal can interrupt the print (the launcher forwards the signal that
        # Slurm also sent to the whole process group) and must find it set, so the message comes once.
        first, self.received = not self.received, request
        if first:
            self._say(why)

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
        """Whether to stop after optimizer step `step`; the same answer on every process."""
        self.stopping = self._agreed(step)
        return self.stopping

    def next_agreement(self, step: int) -> float:
        """The first step after `step` at which processes agree on stopping (`stop_at` asks the others then);
        inf for one process, whose answer is `received` itself."""
        return math.inf if self.processes.world_size == 1 else max(self._next_check, step + 1)

    def _agreed(self, step: int) -> bool:
        if self.processes.world_size == 1:
            return bool(self.received)
        if step < self._next_check:
            return False
        now = time.perf_counter()
        seconds_per_step = (now - self._since[1]) / max(step - self._since[0], 1) if self._since else 0.0
        agreed = self.processes.max(torch.tensor([float(self.received), seconds_per_step], device=self.processes.device))
        request, slowest = agreed.tolist()
        self._since = (step, now)
        self._next_check = step + max(1, int(CHECK_EVERY_SECONDS / slowest) if slowest > 0 else 1)
        if request and not self.received:  # another process's request: the main process says it
            self._say(self._elsewhere(int(request)))
        return request > 0

    def _elsewhere(self, request: int) -> str:
        """Why another process asked to stop."""
        if request != LAUNCHER_GONE:
            return f"another process got {signal.Signals(request).name}"
        if self._launcher_gone():  # the same launcher, noticed there first
            return f"the launcher (pid {self._launcher}) is gone"
        return "another process's launcher is gone"

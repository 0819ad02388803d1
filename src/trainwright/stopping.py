"""Stop signals: SIGTERM/SIGUSR1 to any process make every process stop at the same step.

With one process the flag is read after every step. With several, they agree on it through a small
all-reduce that also carries the slowest process's seconds per step, so the next check comes after
about `CHECK_EVERY_SECONDS` of training: a collective about ten times a second, never once per step of
a small model, and still after every step of a model whose steps take longer than that. A signal that
arrives in the last fraction of a second of a run may let it complete instead (exit 0).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

from trainwright.processes import Processes

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
CHECK_EVERY_SECONDS = 0.1


class StopSignals:
    """Catches the stop signals while training and tells every process, at the same step, to stop."""

    def __init__(self, processes: Processes) -> None:
        self.processes = processes
        self.received = 0  # the signal number, once one arrived here
        self.stopping = False  # whether the processes agreed to stop
        self.finishing = False  # the last step is done: a stop signal no longer changes anything
        self._next_check = 0
        self._since: tuple[int, float] | None = None  # (step, time) of the last agreement

    @contextlib.contextmanager
    def caught(self) -> Iterator[None]:
        """While inside, a stop signal only sets the flag (a second one changes nothing)."""

        def request_stop(signum: int, _frame: Any) -> None:
            # The flag first: a second signal can interrupt the print (the launcher forwards the signal that
            # Slurm also sent to the whole process group) and must find it set, so the message comes once.
            first, self.received = not self.received, signum
            if first:
                then = "finishing the run first" if self.finishing else "saving a checkpoint after this step"
                print(f"trainwright: got {signal.Signals(signum).name}; {then}", file=sys.stderr, flush=True)

        previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                # Once stopping (here or on another process), ignore further signals so they cannot turn the
                # exit code 75 into a kill: the launcher may signal every worker as soon as one has exited.
                # (Python resets its own handlers to the default while it shuts down, but keeps SIG_IGN.)
                signal.signal(sig, signal.SIG_IGN if self.stopping or self.received else handler)

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
        flag, slowest = agreed.tolist()
        self._since = (step, now)
        self._next_check = step + max(1, int(CHECK_EVERY_SECONDS / slowest) if slowest > 0 else 1)
        return flag > 0

"""Runs `trainwright train` for a list of run dirs, one after another or N at a time, each in a process of
its own: isolated (its own Accelerate state, memory, crash), resumable exactly (an unfinished run dir
resumes from its newest checkpoint) and parallel on the cores. Stop signals are passed on to the running
trainings, which save a checkpoint and exit 75; no new one starts then."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwright.errors import EXIT_NONFINITE, EXIT_PREEMPTED
from trainwright.files import open_append
from trainwright.run_plan import completed_run_summary
from trainwright.rundir import RunDir

_FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


@dataclass
class Job:
    """One run: `trainwright train RECIPE OVERRIDES --run-dir RUN_DIR`."""

    name: str
    recipe: Path
    overrides: list[str]
    run_dir: Path
    exit_code: int | None = field(default=None, init=False)

    def completed(self) -> dict[str, Any] | None:
        """The run's summary when it completed and its final weights are whole (then it is not started
        again). A damaged summary or missing weights start it: `train` writes them again and says so."""
        run = RunDir(self.run_dir)
        return completed_run_summary(run, notes=[]) if run.holds_run() else None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "trainwright", "train", str(self.recipe), *self.overrides, "--run-dir",
                str(self.run_dir)]


def run_jobs(jobs: list[Job], parallel: int, log_dir: Path) -> int:
    """Train every job not completed yet, at most `parallel` at a time; with several at a time each gets
    an equal share of the cores and its output goes to `log_dir/<name>.log`. Returns 0, 75 when stopped by
    a signal, or the exit code of the first failed job (a job that stops at a non-finite loss, exit 3, is
    recorded and the others go on)."""
    pending = [job for job in jobs if job.completed() is None]
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    running: list[tuple[Job, subprocess.Popen]] = []
    failed = 0
    with _forwarding(running) as stop:
        while (pending and not stop.requested and not failed) or running:
            while pending and len(running) < parallel and not stop.requested and not failed:
                running.append((job := pending.pop(0), _start(job, parallel, threads, log_dir)))
            time.sleep(0.1)
            for job, process in [(j, p) for j, p in running if p.poll() is not None]:
                running.remove((job, process))
                job.exit_code = process.returncode
                print(f"trainwright: {job.name}: {_outcome(process.returncode)}", file=sys.stderr, flush=True)
                if process.returncode not in (0, EXIT_NONFINITE, EXIT_PREEMPTED) and not failed:
                    failed = process.returncode
    if failed:
        return failed
    return EXIT_PREEMPTED if stop.requested or any(job.exit_code == EXIT_PREEMPTED for job in jobs) else 0


def _start(job: Job, parallel: int, threads: str, log_dir: Path) -> subprocess.Popen:
    print(f"trainwright: {job.name}: training in {job.run_dir}", file=sys.stderr, flush=True)
    if parallel == 1:
        return subprocess.Popen(job.command())
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    with os.fdopen(open_append(log_dir / f"{job.name}.log"), "a") as log:
        return subprocess.Popen(job.command(), stdout=log, stderr=subprocess.STDOUT, env=env)


def _outcome(code: int) -> str:
    return {0: "complete", EXIT_PREEMPTED: "stopped with a checkpoint (run the same command to go on)",
            EXIT_NONFINITE: "stopped at a non-finite loss"}.get(code, f"failed (exit code {code})")


@dataclass
class _Stop:
    requested: bool = False


@contextmanager
def _forwarding(running: list[tuple[Job, subprocess.Popen]]) -> Iterator[_Stop]:
    """While inside, a stop signal is passed on to every running training and no new one starts."""
    stop = _Stop()

    def forward(signum: int, _frame: Any) -> None:
        stop.requested = True
        for _, process in running:
            if process.poll() is None and signum != signal.SIGINT:  # Ctrl-C reaches them from the terminal
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

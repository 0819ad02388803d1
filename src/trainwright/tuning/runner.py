"""Runs `trainwright train` for a list of run dirs, one after another or N at a time, each in a process of
its own: isolated (its own Accelerate state, memory, crash), resumable exactly (an unfinished run dir
resumes from its newest checkpoint) and parallel on the cores. Stop signals are passed on to the running
trainings, which save a checkpoint and exit 75; no new one starts then. A training ends with the study's
process: when that dies (even by SIGKILL), the kernel sends the training SIGTERM (Linux's parent-death
signal), so it stops with a checkpoint too. A run dir that another process is training is left alone."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwright.errors import EXIT_NONFINITE, EXIT_PREEMPTED, EXIT_USER_ERROR
from trainwright.run.directory import RunDir
from trainwright.run.files import open_append
from trainwright.run.lock import holder
from trainwright.run.plan import completed_run_summary

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
    an equal share of the cores and its output goes to `log_dir/<name>.log`. Returns 0; 75 when stopped by
    a signal; the exit code of the first failed job (128+N for one killed by signal N), after which no new
    one starts; or 2 when a run dir was in use by another process (it is not started, the others are). A
    job that stops at a non-finite loss (exit 3) is recorded and the others go on."""
    pending = [job for job in jobs if job.completed() is None]
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    running: list[tuple[Job, subprocess.Popen]] = []
    failed = in_use = 0
    with _forwarding(running) as stop:
        while (pending and not stop.signal and not failed) or running:
            while pending and len(running) < parallel and not stop.signal and not failed:
                job = pending.pop(0)
                if _in_use(job):
                    in_use = EXIT_USER_ERROR
                    continue
                running.append((job, process := _start(job, parallel, threads, log_dir)))
                stop.pass_on(process)  # a signal that came while it started
            time.sleep(0.1)
            for job, process in [(j, p) for j, p in running if p.poll() is not None]:
                running.remove((job, process))
                job.exit_code = _exit_code(process.returncode, stop)
                if job.exit_code == EXIT_USER_ERROR and _in_use(job):
                    in_use = EXIT_USER_ERROR
                    continue
                print(f"trainwright: {job.name}: {_outcome(process.returncode, stop)}", file=sys.stderr, flush=True)
                if job.exit_code not in (0, EXIT_NONFINITE, EXIT_PREEMPTED) and not failed:
                    failed = job.exit_code
    if failed or in_use:
        return failed or in_use
    return EXIT_PREEMPTED if stop.signal or any(job.exit_code == EXIT_PREEMPTED for job in jobs) else 0


def _in_use(job: Job) -> bool:
    """Whether another process holds the job's run dir (a `train` of it started by hand or by another
    command): it is said, and nothing of the run dir or its log is touched."""
    user = holder(RunDir(job.run_dir))
    if user is not None:
        print(f"trainwright: {job.name}: not trained: {job.run_dir} is in use by another process ({user}); its "
              "files and log are left as they are. Run the same command again once that has ended", file=sys.stderr,
              flush=True)
    return user is not None


def _exit_code(code: int, stop: _Stop) -> int:
    """A training's exit code as the study counts it: one killed by the stop signal the study passed on
    (before or after its training loop, where it has no handler) stopped like one that saved a checkpoint;
    one killed by another signal N failed with 128+N, as a shell says it."""
    if code >= 0:
        return code
    return EXIT_PREEMPTED if -code == stop.signal else 128 - code


def _start(job: Job, parallel: int, threads: str, log_dir: Path) -> subprocess.Popen:
    print(f"trainwright: {job.name}: training in {job.run_dir}", file=sys.stderr, flush=True)
    ends_with_us = _end_with(os.getpid())
    if parallel == 1:
        return subprocess.Popen(job.command(), preexec_fn=ends_with_us)
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    with os.fdopen(open_append(log_dir / f"{job.name}.log"), "a") as log:
        return subprocess.Popen(job.command(), stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=ends_with_us)


_PR_SET_PDEATHSIG = 1  # prctl(2)


def _end_with(parent: int) -> Callable[[], None]:
    """For the child, between fork and exec: SIGTERM when `parent` dies (the training saves a checkpoint
    and exits 75; before its training loop, SIGTERM ends it with nothing to save). A parent already gone
    by then ends the child at once. Linux only; elsewhere a training outlives a killed study (stop the
    study with SIGTERM instead)."""
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)

    def set_parent_death_signal() -> None:
        if prctl is None:
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the study's handler, inherited until exec
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return set_parent_death_signal


def _outcome(code: int, stop: _Stop) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        if -code == stop.signal:
            return f"ended by {name} before or after its training (run the same command to go on)"
        return f"killed by {name}"
    return {0: "complete", EXIT_PREEMPTED: "stopped with a checkpoint (run the same command to go on)",
            EXIT_NONFINITE: "stopped at a non-finite loss"}.get(code, f"failed (exit code {code})")


@dataclass
class _Stop:
    signal: int = 0  # the stop signal the study got (0: none)

    def pass_on(self, process: subprocess.Popen) -> None:
        """Send the stop signal to a running training (Ctrl-C reaches them from the terminal itself)."""
        if self.signal and self.signal != signal.SIGINT and process.poll() is None:
            process.send_signal(self.signal)


@contextmanager
def _forwarding(running: list[tuple[Job, subprocess.Popen]]) -> Iterator[_Stop]:
    """While inside, a stop signal is passed on to every running training and no new one starts."""
    stop = _Stop()

    def forward(signum: int, _frame: Any) -> None:
        stop.signal = signum
        for _, process in running:
            stop.pass_on(process)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

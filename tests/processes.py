"""Processes a test starts: run in the foreground or the background, wait on what they do, always end them.

Every process a test starts carries a tag in its environment (`TRAINWRIGHT_TEST_TAG`); children inherit
it, including torchrun workers (which start in sessions of their own, so a process-group kill misses
them), DataLoader workers and W&B's service process. Ending a test's processes means killing every
process with its tag, even the ones whose parent is already gone, so a failing wait never leaves
trainers running into later tests. Nothing without the tag is ever signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

TAG_VAR = "TRAINWRIGHT_TEST_TAG"
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port that is free now, chosen by the OS (for `accelerate launch --main_process_port`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tagged_processes(tag: str) -> list[psutil.Process]:
    """The live processes whose environment carries `tag`."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            if process.environ().get(TAG_VAR) == tag:
                found.append(process)
    return found


def kill_tagged(tag: str) -> None:
    """SIGKILL every process carrying `tag` (repeated while any is left, e.g. one forked meanwhile)."""
    for _ in range(50):
        processes = tagged_processes(tag)
        if not processes:
            return
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                process.kill()
        psutil.wait_procs(processes, timeout=5)
    raise RuntimeError(f"processes tagged {tag} survive SIGKILL: {tagged_processes(tag)}")


def tagged_env(env: dict[str, str]) -> tuple[dict[str, str], str]:
    tag = uuid.uuid4().hex
    return {**env, TAG_VAR: tag}, tag


def _default_sigint() -> None:
    """In the child: Ctrl-C (SIGINT) does what it does in a terminal. A shell without job control starts
    background commands (pytest among them) with SIGINT ignored, and children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(
    args: Sequence[object], env: dict[str, str], cwd: Path = REPO, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run a command to its end (stdin closed, output captured); never raises on failure. Whatever it
    started and left behind (or everything, on a timeout) is killed before this returns."""
    env, tag = tagged_env(env)
    try:
        return subprocess.run([str(a) for a in args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, preexec_fn=_default_sigint)
    finally:
        kill_tagged(tag)


class Background:
    """A command running in the background, its stdout and stderr going to one log file."""

    def __init__(self, args: Sequence[object], log: Path, env: dict[str, str], cwd: Path = REPO) -> None:
        self.args = [str(a) for a in args]
        self.log = log
        env, self.tag = tagged_env(env)
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(self.args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=_default_sigint)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        return f"command: {self.args}\nexit code: {self.popen.poll()}\n--- output ---\n{self.output()}"

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 120, interval: float = 0.005) -> Any:
        """Poll `check` until it returns something true; fail (with the output) if the process ends first or
        after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if self.popen.poll() is not None:
                value = check()  # it may have happened just before the exit
                if value:
                    return value
                pytest.fail(f"the process ended before {what}\n{self.describe()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{self.describe()}")
            time.sleep(interval)

    def wait_for_text(self, text: str, timeout: float = 120) -> None:
        self.wait_for(repr(text), lambda: text in self.output(), timeout, interval=0.02)

    def signal(self, sig: int) -> None:
        """Signal the process itself (not its children). Until it is waited for, its pid stays reserved."""
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, sig)

    def children(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.NoSuchProcess):
            return psutil.Process(self.popen.pid).children(recursive=True)
        return []

    def finish(self, timeout: float = 240) -> int:
        """Wait for the process to exit and return its exit code; fail (with the output) after `timeout`."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running after {timeout:.0f}s\n{self.describe()}")

    def kill(self) -> None:
        """SIGKILL the process at once, then everything it started (as a node failure or the OOM killer would)."""
        self.signal(signal.SIGKILL)
        kill_tagged(self.tag)
        self.popen.wait()


class Starter:
    """Starts background commands for one test (or one module fixture) and kills them all at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[Background] = []

    def __call__(
        self, args: Sequence[object], env: dict[str, str], name: str = "process", cwd: Path = REPO
    ) -> Background:
        log = self.folder / f"{name}-{len(self.started)}.log"
        process = Background(args, log, env, cwd)
        self.started.append(process)
        return process

    def close(self) -> None:
        for process in self.started:
            process.kill()


@contextlib.contextmanager
def starter(folder: Path) -> Iterator[Starter]:
    start = Starter(folder)
    try:
        yield start
    finally:
        start.close()


@contextlib.contextmanager
def adopting_orphans() -> Iterator[None]:
    """While inside, this process is a child subreaper (Linux): a descendant whose parent dies (a torchrun
    worker whose launcher was killed) is re-parented to it rather than to pid 1, so `reap` can read its exit
    code. Skips the test where prctl cannot do it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip(f"cannot become a child subreaper here: {os.strerror(ctypes.get_errno())}")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def reap(pids: Sequence[int], timeout: float) -> dict[int, int]:
    """Wait for the processes `pids` (children of this process, or orphans it adopted) to exit; their exit
    codes (-N: killed by signal N). Fails naming the ones still running after `timeout` seconds."""
    codes: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(codes) < len(pids):
        for pid in set(pids) - set(codes):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not re-parented here yet (its parent is still exiting)
                continue
            if done:
                codes[pid] = os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            pytest.fail(f"still running {timeout:.0f}s later: {sorted(set(pids) - set(codes))} (exited: {codes})")
        time.sleep(0.02)
    return codes

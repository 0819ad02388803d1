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
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

TAG_VAR = "TRAINWRIGHT_TEST_TAG"
NO_FORK_SERVER_VAR = "TRAINWRIGHT_TEST_NO_FORK_SERVER"  # =1: every command a new process (tests/fork_server.py)
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
    started and left behind (or everything, on a timeout) is killed before this returns. A Python command
    (`python -m MODULE ...`, `python SCRIPT ...`; for `accelerate launch`, the launcher: torchrun starts its
    workers as new processes) is forked from this pytest worker's fork server (tests/fork_server.py) when the
    variables that Python and torch read at start-up are the server's; anything else is a new process."""
    args, (env, tag) = [str(a) for a in args], tagged_env(env)
    server = _fork_server(args, env)
    try:
        if server is not None:
            return server.run(args, env, cwd, timeout)
        return subprocess.run(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, preexec_fn=_default_sigint)
    finally:
        if server is not None:
            server.end_descendants()
        kill_tagged(tag)


# Variables read when Python or torch start (or imports torch makes), and the kill set by the environment
# (tests/hooks/sitecustomize.py): a command is forked from a server that started with the same values.
_START_UP_VARS = ("PYTHON", "OMP_", "MKL_", "KMP_", "TORCH", "CUDA_", "LD_", "TRAINWRIGHT_TEST_KILL")


def _start_up_env(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key.startswith(_START_UP_VARS)}


class ForkServer:
    """tests/fork_server.py, started on first use in a pytest worker (one per worker, one command at a time)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.start_up_env = _start_up_env(env)
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fork_server.py"))],
                                        cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        preexec_fn=_default_sigint)
        if self._answer(timeout=120) != "ready":
            raise RuntimeError("tests/fork_server.py did not start")

    def _answer(self, timeout: float) -> str | None:
        """The server's next line, or None after `timeout` seconds; fails when the server has ended."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"tests/fork_server.py ended (exit code {self.process.wait()})")
        return line.strip()

    def run(self, args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
        assert self.process.stdin is not None
        with tempfile.TemporaryDirectory(prefix="fork-server-") as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            request = {"argv": args, "env": env, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            pid = json.loads(self._answer(timeout=60) or "null")["pid"]
            answer = self._answer(timeout)
            if answer is None:  # as subprocess.run's timeout: kill it, then raise
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._answer(timeout=60)
                raise subprocess.TimeoutExpired(args, timeout, out.read_text(errors="replace"),
                                                err.read_text(errors="replace"))
            returncode = json.loads(answer)["returncode"]
            return subprocess.CompletedProcess(args, returncode, out.read_text(errors="replace"),
                                               err.read_text(errors="replace"))

    def close(self) -> None:
        """End the server (its stdin closed: it exits) and whatever it still holds."""
        self.end_descendants()
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def end_descendants(self) -> None:
        """SIGKILL whatever the last command left behind (the server adopts orphans)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            left = psutil.Process(self.process.pid).children(recursive=True)
            for process in left:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            psutil.wait_procs(left, timeout=5)


_servers: dict[tuple[int, str], ForkServer] = {}  # by (pid, start-up variables); a forked pytest process starts its own
_MOST_SERVERS = 3  # per pytest worker: a server holds ~600 MB; the least recently used one goes


def _fork_server(args: list[str], env: dict[str, str]) -> ForkServer | None:
    """The fork server for a Python command `args` with `env` (started on first use), or None for anything else."""
    python = len(args) > 2 and args[0] == sys.executable and (args[1] == "-m" or args[1].endswith(".py"))
    if not python or os.environ.get(NO_FORK_SERVER_VAR) == "1":
        return None
    key = (os.getpid(), json.dumps(_start_up_env(env), sort_keys=True))
    server = _servers.pop(key, None)  # popped and put back: the dict's order is the order of use
    if server is None or server.process.poll() is not None:
        server = ForkServer({k: v for k, v in env.items() if k != TAG_VAR})
    _servers[key] = server
    mine = [other for other in _servers if other[0] == key[0]]
    for oldest in mine[:-_MOST_SERVERS]:
        _servers.pop(oldest).close()
    return server


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

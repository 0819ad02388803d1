"""`python tests/fork_server.py`: a fork server for the one-process `python ...` commands the tests run to their
end (tests/processes.py `run`). A process start is ~4 s of CPU here, nearly all of it importing torch and
torch._dynamo (which torch.optim imports on the first optimizer), against well under a second of work for the
tiny runs the tests make; this server imports them once and forks a child per command, which then runs it as
`python -m MODULE ARGS` or `python SCRIPT ARGS` would: its own process, environment, working folder, stdin
from /dev/null, stdout and stderr to files, Python's SIGINT handler, exit codes and deaths by signal as Python's.

Protocol (one command at a time, JSON lines): the client writes {"argv", "env", "cwd", "stdout", "stderr"}; the
server answers {"pid": ...} once the child is forked and {"returncode": ...} once it has ended. The server is a
child subreaper: what a child leaves behind (a DataLoader worker of a killed run) becomes the server's, and the
client kills the server's descendants after every command (tests/processes.py).
"""

from __future__ import annotations

import atexit
import ctypes
import io
import json
import os
import runpy
import signal
import sys
import threading
import traceback
from typing import Any, NoReturn

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def _exit_code(exc: SystemExit) -> int:
    """What Python's exit status is for `sys.exit(code)`."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _open_stdio(stdout: str, stderr: str) -> None:
    """fd 0 from /dev/null, fds 1 and 2 to the files; sys.std* over them, unbuffered (PYTHONUNBUFFERED)."""
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                                   write_through=True)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                                   errors="backslashreplace", write_through=True)


def _run(argv: list[str]) -> None:
    """`python -m MODULE ARGS` or `python SCRIPT ARGS`, in this (forked) process."""
    if argv[1] == "-m":
        sys.argv = [argv[2], *argv[3:]]
        sys.path[0] = os.getcwd()
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv[1:]
        sys.path[0] = os.path.dirname(os.path.abspath(argv[1]))
        runpy.run_path(argv[1], run_name="__main__")


def _print_traceback(exc: BaseException) -> None:
    """The traceback Python prints, without this server's and runpy's frames above the command's own."""
    tb = exc.__traceback__
    while tb is not None and (tb.tb_frame.f_code.co_filename in (__file__, "<frozen runpy>")
                              or tb.tb_frame.f_code.co_filename.endswith("runpy.py")):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def _child(request: dict[str, Any]) -> NoReturn:
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # what Python installs at start (a KeyboardInterrupt)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        _open_stdio(request["stdout"], request["stderr"])
        _run(request["argv"])
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except KeyboardInterrupt as exc:  # as Python does: the traceback, then death by SIGINT
        _print_traceback(exc)
        code = -signal.SIGINT
    except BaseException as exc:
        _print_traceback(exc)
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  # as at interpreter exit: join non-daemon threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if code == -signal.SIGINT:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code & 0xFF)


def main() -> None:
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    import torch
    import torch._dynamo  # noqa: F401

    protocol = sys.stdout
    protocol.write("ready\n")
    protocol.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        protocol.write(json.dumps({"pid": pid}) + "\n")
        protocol.flush()
        while True:  # orphans of earlier commands may end first: this server adopted them
            ended, status = os.waitpid(-1, 0)
            if ended == pid:
                break
        protocol.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        protocol.flush()


if __name__ == "__main__":
    main()

"""What the test suite's CPU goes to: the new Python interpreters the tests start (torchrun workers, cv/sweep
trials, the tests' fork servers, ...), counted by kind, with the CPU of those that exit normally, and how busy
the machine's cores were over the run.

    python -m benchmarks.suite_cost [PYTEST ARGS ...]    # e.g. tests/test_fsdp.py; default: the whole suite

pytest runs with a `sitecustomize` first on PYTHONPATH that records each interpreter's start and, at a normal
exit, its CPU time. A forked child (a command of tests/fork_server.py) runs no `sitecustomize`, so it is not a
start; a process killed by a signal leaves no CPU record; a test that sets a PYTHONPATH of its own without the
one it was given (a few do, for a user's code or a fake package) hides its processes from the count.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOG_VAR = "TRAINWRIGHT_SUITE_COST_LOG"

RECORDER = """
import atexit, json, os, resource, sys

_log = os.environ.get("TRAINWRIGHT_SUITE_COST_LOG")


def _write(record):
    with open(_log, "a") as file:
        file.write(json.dumps(record) + "\\n")


def _parent_command():
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as file:
            return file.read().replace(b"\\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _exit():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _write({"pid": os.getpid(), "cpu": usage.ru_utime + usage.ru_stime})


if _log:
    _write({"pid": os.getpid(), "argv": sys.orig_argv, "rank": os.environ.get("RANK"), "parent": _parent_command()})
    atexit.register(_exit)
"""


def kind(start: dict) -> str:
    """What started an interpreter, from its command line, its RANK and its parent's command line."""
    command, parent = " ".join(start["argv"]), start["parent"]
    if start["rank"] is not None:
        return "torchrun worker"
    if "fork_server.py" in command:
        return "the tests' fork server"
    if "-m trainwright train" in command and "trainwright" in parent and (" sweep " in parent or " cv " in parent):
        return "cv fold / sweep trial"
    if "accelerate" in command and "launch" in command:
        return "accelerate launcher (not forked)"
    if "-m trainwright" in command:
        return "other trainwright command (not forked)"
    if "pytest" in command or "execnet" in command or " -c " in command:
        return "pytest and its xdist workers"
    argv = [a for a in start["argv"][1:] if a not in ("-u", "-B", "-I")]
    return "other: " + (argv[1] if argv[:1] == ["-m"] and len(argv) > 1 else Path(argv[0] if argv else "?").name)


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine so far (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values)


def main(pytest_args: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="suite-cost-") as folder:
        (Path(folder) / "sitecustomize.py").write_text(RECORDER)
        log = Path(folder) / "interpreters.jsonl"
        env = {**os.environ, LOG_VAR: str(log),
               "PYTHONPATH": os.pathsep.join(filter(None, [folder, os.environ.get("PYTHONPATH")]))}
        before, started = busy_jiffies(), time.monotonic()
        code = subprocess.call([sys.executable, "-m", "pytest", "-q", *pytest_args], cwd=REPO, env=env)
        after, wall = busy_jiffies(), time.monotonic() - started
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    starts = {r["pid"]: r for r in records if "argv" in r}
    count: collections.Counter[str] = collections.Counter(kind(s) for s in starts.values())
    cpu: collections.Counter[str] = collections.Counter()
    exited: collections.Counter[str] = collections.Counter()
    for record in records:
        if "cpu" in record and record["pid"] in starts:
            cpu[kind(starts[record["pid"]])] += record["cpu"]
            exited[kind(starts[record["pid"]])] += 1
    busy = (after[0] - before[0]) / max(1, after[1] - before[1])
    cores = os.cpu_count() or 1
    print(f"\npytest exit code {code}; {wall:.0f} s of wall; the {cores} cores {100 * busy:.1f}% busy "
          f"(~{busy * cores * wall:.0f} core-seconds)")
    print(f"{'new interpreters':<40} {'started':>8} {'exited':>7} {'CPU s':>8} {'CPU s each':>11}")
    for name, started_count in count.most_common():
        each = cpu[name] / exited[name] if exited[name] else float("nan")
        print(f"{name:<40} {started_count:>8} {exited[name]:>7} {cpu[name]:>8.0f} {each:>11.2f}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

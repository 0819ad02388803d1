"""Running jobs in fresh processes, interleaved, and summarising their repeats."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.rows import ROWS
from benchmarks.workloads import ROOT, Workload

RESULT = "RESULT "  # the line benchmarks.child prints its figures on


@dataclass(frozen=True)
class Context:
    """What every job of one benchmark run shares."""

    data_root: Path
    quick: bool
    threads: int

    def env(self) -> dict[str, str]:
        """The environment of every subprocess: the same thread count everywhere, no launcher variables."""
        launch = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        env = {k: v for k, v in os.environ.items() if k not in launch}
        env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads), PYTHONUNBUFFERED="1",
                   TRAINWRIGHT_CACHE=str(self.data_root / "cache"))  # the text corpus's tokens, stored once
        return env


def free_port() -> int:
    """A TCP port the OS says is free now (for a launcher's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list[str], context: Context) -> tuple[float, str]:
    """Run a command from the repository root; its wall seconds and stdout. A failure stops the benchmark."""
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=ROOT, env=context.env(), stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return seconds, done.stdout


def job(name: str, workload: str, context: Context) -> dict[str, Any]:
    """One benchmarks.child job in a fresh process; the figures it printed."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.child",
        name,
        workload,
        str(context.data_root),
        f"--threads={context.threads}",
    ]
    _, stdout = run(command + (["--quick"] if context.quick else []), context)
    return json.loads(next(line for line in stdout.splitlines() if line.startswith(RESULT))[len(RESULT):])


@dataclass
class Samples:
    """The repeats of one measured quantity."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def spread(self, decimals: int = 2) -> str:
        low, high = min(self.values), max(self.values)
        return f"{low:.{decimals}f}-{high:.{decimals}f}" if len(self.values) > 1 else "-"


@dataclass
class RowResult:
    """A row's repeats: epoch seconds, peak RSS of its process, and the thread counts torch reported."""

    seconds: Samples = field(default_factory=Samples)
    peak_rss_mib: Samples = field(default_factory=Samples)
    threads: set[int] = field(default_factory=set)
    first_epoch: Samples = field(default_factory=Samples)  # rows that train two epochs: the first one's seconds


def interleaved(workload: Workload, context: Context, repeats: int) -> dict[str, RowResult]:
    """Every available row once per repeat, in table order, each in a fresh process."""
    rows = [row for row in ROWS if row.missing() is None]
    results = {row.key: RowResult() for row in rows}
    for repeat in range(repeats):
        for row in rows:
            figures = job(row.key, workload.key, context)
            result = results[row.key]
            result.seconds.values.append(figures["seconds"])
            result.peak_rss_mib.values.append(figures["peak_rss_mib"])
            result.threads.add(figures["threads"])
            if "first_epoch_seconds" in figures:
                result.first_epoch.values.append(figures["first_epoch_seconds"])
            print(
                f"[{workload.key} {repeat + 1}/{repeats}] {row.key}: {figures['seconds']:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    return results

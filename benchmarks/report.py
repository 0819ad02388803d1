"""The benchmark's Markdown: the machine, one table per training workload, start-up, the large-state case."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version

from benchmarks.checkpoints import LargeState
from benchmarks.ddp import Ddp
from benchmarks.measure import RowResult, Samples
from benchmarks.rows import ROWS
from benchmarks.startup import Startup
from benchmarks.workloads import ROOT, Scale, Workload

NOT_LOGGED = "not measured by this trainwright"


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def load_average() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def machine(threads: int, repeats: int, load_before: str) -> str:
    return (
        f"Machine: {_cpu_model()} ({os.cpu_count()} cores), Python {platform.python_version()}, "
        f"torch {_version('torch')}, accelerate {_version('accelerate')}, "
        f"pytorch-lightning {_version('pytorch-lightning')}, trainwright at {_commit()}. "
        f"{threads} thread(s) per process (OMP_NUM_THREADS and torch.set_num_threads). Every row is a fresh process; "
        f"medians of interleaved rounds ({repeats} unless a table says otherwise: each round runs every row once). "
        f"Load average (1/5/15 min) at the start: {load_before}, "
        f"at the end: {load_average()}."
    )


def _seconds(samples: Samples) -> str:
    return f"{samples.median:.2f} | {samples.spread()}"


def _epoch_seconds(samples: Samples) -> str:
    """Three decimals: the heart epochs are about a third of a second."""
    return f"{samples.median:.3f} | {samples.spread(3)}"


def _round_ratios(mine: Samples, theirs: Samples) -> str:
    """trainwright's epoch over another row's, round by round (the rows of a round run one after the other)."""
    ratios = Samples([a / b for a, b in zip(mine.values, theirs.values, strict=True)])
    return f"median {ratios.median:.3f} (range {ratios.spread(3)})"


def training_table(workload: Workload, results: dict[str, RowResult], threads: int) -> str:
    """One epoch per row: median and range of seconds, trainwright's median over the row's, peak RSS; and
    trainwright over the hand-written loop round by round."""
    mine = results["trainwright"].seconds
    rounds = len(mine.values)
    lines = [
        f"### {workload.title}, one epoch ({rounds} interleaved round{'s' if rounds > 1 else ''})",
        "",
        "| loop | epoch s (median) | range s | trainwright / loop | peak RSS MiB (whole process) |",
        "|---|---:|---:|---:|---:|",
    ]
    notes = [f"trainwright / hand-written loop per round: {_round_ratios(mine, results['hand-written'].seconds)}."]
    for row in ROWS:
        result = results.get(row.key)
        if result is None:
            lines.append(f"| {row.label(workload)} | skipped: {row.missing()} is not installed | | | |")
            notes.append(f"The {row.key} row was skipped: `{row.missing()}` is not installed "
                         "(`pip install -c constraints.txt -e '.[bench]'`).")
            continue
        lines.append(f"| {row.label(workload)} | {_epoch_seconds(result.seconds)} | "
                     f"{mine.median / result.seconds.median:.2f} | {result.peak_rss_mib.median:.0f} |")
        if result.threads != {threads}:
            notes.append(f"The {row.key} row ran with {sorted(result.threads)} threads, not {threads}.")
        if result.first_epoch.values:
            notes.append(f"With `trainer.compile=true` the first epoch took {result.first_epoch.median:.2f} s "
                         f"(range {result.first_epoch.spread()}; torch.compile's work included, from its on-disk "
                         f"cache after the first repeat), the second {result.seconds.median:.2f} s against "
                         f"{mine.median:.2f} s without compile.")
    return "\n".join(lines + [""] + notes).rstrip()


def startup_table(startup: Startup) -> str:
    over_torch = startup.one_step_run.median - startup.import_torch.median
    logged = _seconds(startup.logged) if startup.logged.values else f"{NOT_LOGGED} |"
    return "\n".join([
        "### Start-up",
        "",
        "| measure | s (median) | range s |",
        "|---|---:|---:|",
        f"| `python -c \"import torch\"`, wall | {_seconds(startup.import_torch)} |",
        f"| `trainwright train recipes/heart.yaml trainer.max_steps=1 logging.wandb=false`, wall | "
        f"{_seconds(startup.one_step_run)} |",
        f"| start-up over `import torch` (difference of the medians) | {over_torch:.2f} | |",
        f"| `train/startup_seconds` logged by trainwright | {logged} |",
        "",
        f"A process that only imports torch peaks at {startup.torch_rss_mib.median:.0f} MiB RSS: the floor of "
        "the memory column above.",
    ])


def ddp_table(ddp: Ddp) -> str:
    ratio = ddp.trainwright.median / ddp.plain.median
    return "\n".join(
        [
            f"### A 2-process DDP step (heart, {ddp.steps} steps of 32 samples per process, 2 CPU processes over gloo)",
            "",
            "| loop | epoch s (median) | range s | trainwright / loop |",
            "|---|---:|---:|---:|",
            "| plain Accelerate DDP: `prepare(model, optimizer)`, `accelerator.backward` "
            f"| {_seconds(ddp.plain)} | {ratio:.2f} |",
            f"| trainwright (`train/epoch_seconds`) | {_seconds(ddp.trainwright)} | |",
            "",
            "Both loops run interleaved in the same two processes (`accelerate_configs/cpu_2proc.yaml`).",
        ]
    )


def _logged_row(label: str, samples: Samples) -> str:
    return f"| {label} | {_seconds(samples)} |" if samples.values else f"| {label} | {NOT_LOGGED} | |"


def large_state_table(title: str, large: LargeState, scale: Scale) -> str:
    saves = scale.saves_in_epoch
    reference = large.save.median
    lines = [
        f"### Checkpoint stall: {title} ({large.state_mb:.1f} MB of model + AdamW state)",
        "",
        "| measure | s (median) | range s |",
        "|---|---:|---:|",
        f"| in-memory copy of the state (`clone()` of every tensor) | {_seconds(large.copy)} |",
        f"| reference: `safetensors.torch.save_file` of the state + fsync | {_seconds(large.save)} |",
        _logged_row(
            "trainwright `checkpoint/stall_seconds`, synchronous (`checkpoint.async=false`), per save", large.sync_stall
        ),
        _logged_row(
            "trainwright `checkpoint/stall_seconds`, background (default), a run's first save", large.first_stall
        ),
        _logged_row("trainwright `checkpoint/stall_seconds`, background (default), later saves", large.stall),
        _logged_row("trainwright `checkpoint/write_seconds` (in the background), per save", large.write),
        f"| trainwright epoch, no checkpoint | {_seconds(large.epoch_plain)} |",
        f"| trainwright epoch, a checkpoint every {scale.save_every} steps ({saves} inside the epoch) | "
        f"{_seconds(large.epoch_with_saves)} |",
        f"| trainwright epoch-time cost per checkpoint, (with - without) / {saves} | "
        f"{large.cost_per_save(saves):.2f} | |",
        f"| a resume's check of the saved state: sha256 of the file (`trainwright.run.files.sha256`) | "
        f"{_seconds(large.verify)} |",
        f"| a resume's load after that check: `load_file` of the file and a read of every tensor | "
        f"{_seconds(large.load)} |",
        "",
        f"Cost per checkpoint / reference save: {large.cost_per_save(saves) / reference:.2f}.",
    ]
    if large.stall.values and large.sync_stall.values:
        lines.append(
            f"Background stall of later saves / synchronous stall: {large.stall.median / large.sync_stall.median:.2f}; "
            f"/ in-memory copy: {large.stall.median / large.copy.median:.2f}."
        )
    return "\n".join(lines)

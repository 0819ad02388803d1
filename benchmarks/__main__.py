"""`python -m benchmarks [--quick] [--repeats N] [--threads N] [--out FILE]`: every table in one run.

Progress goes to stderr; the tables (Markdown) to stdout at the end, and to FILE with --out."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report
from benchmarks.checkpoints import measure_large_state
from benchmarks.ddp import measure_ddp
from benchmarks.gpt import gpt_table, measure_gpt
from benchmarks.measure import Context, interleaved
from benchmarks.startup import measure_startup
from benchmarks.synthetic import write_all
from benchmarks.workloads import FULL, QUICK, large_state_workload, training_workloads


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of every row on small data (not a measurement)"
    )
    parser.add_argument("--repeats", type=int, help=f"interleaved repeats of every table (default {FULL.repeats}, "
                        f"heart {FULL.heart_repeats}; --quick {QUICK.repeats})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every process (default 1)")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    repeats = args.repeats or scale.repeats
    started, load_before = time.perf_counter(), report.load_average()
    with tempfile.TemporaryDirectory(prefix="trainwright-bench-") as tmp:
        context = Context(Path(tmp), args.quick, args.threads)
        write_all(context.data_root, scale)
        sections = [report.training_table(w, interleaved(w, context, args.repeats or w.repeats(scale)), args.threads)
                    for w in training_workloads(context.data_root, scale)]
        sections.append(gpt_table(measure_gpt(context, scale, repeats)))
        sections.append(report.ddp_table(measure_ddp(context, repeats)))
        sections.append(report.startup_table(measure_startup(context, runs=max(repeats, scale.startup_runs))))
        large = large_state_workload(context.data_root, scale, saves=True)
        sections.append(report.large_state_table(large.title, measure_large_state(context, repeats), scale))
    minutes = (time.perf_counter() - started) / 60
    text = "\n\n".join([report.machine(args.threads, repeats, load_before), *sections,
                        f"Whole benchmark: {minutes:.1f} min. Reproduce: `make bench` "
                        f"(`python -m benchmarks{' --quick' if args.quick else ''}`)."]) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    sys.exit(main())

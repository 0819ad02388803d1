"""One job in a fresh process, so that its peak memory is its own:

    python -m benchmarks.child JOB WORKLOAD DATA_ROOT [--quick] [--threads N]

prints one line `RESULT {json}`: the job's figures, the thread count torch used and the process's peak
resident memory (ru_maxrss: the interpreter, the libraries it imported, the data and the training)."""

from __future__ import annotations

import argparse
import json
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.checkpoints import reference_save
from benchmarks.loops import LOOPS
from benchmarks.measure import RESULT
from benchmarks.workloads import FULL, QUICK, Workload, workload_by_key

JOBS: dict[str, Callable[[Workload], dict[str, Any]]] = {**LOOPS, "reference-save": reference_save}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", choices=sorted(JOBS))
    parser.add_argument("workload")
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = JOBS[args.job](workload_by_key(args.workload, args.data_root, QUICK if args.quick else FULL))
    result["threads"] = torch.get_num_threads()
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(RESULT + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

"""Resuming a streamed data set mid-epoch (issue 21's choice of mechanism): torchdata's StatefulDataLoader
over a webdataset pipeline against trainwright's own order contract (`data.name: shards`), on the same tar
shards, with the same workers and batch size.

StatefulDataLoader saves how many items each worker yielded; a data set without a state of its own (as
webdataset's pipeline) is fast-forwarded on resume: each worker reads and decodes every sample it
served before. trainwright's contract derives the position from (seed, epoch, step) and each process
seeks to its own samples. Measured: seconds from making the loader (the saved state loaded) to its first
batch, at the start of an epoch and resumed at FRACTION of it; each in a fresh process, interleaved.

    python -m benchmarks.stream_resume [--shards 20] [--per-shard 2500] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH, FRACTION = 64, 0.9


def write_shards(root: Path, shards: int, per_shard: int) -> None:
    import webdataset as wds

    rng, number = np.random.default_rng(0), 0
    for name, count in [*((f"train-{i:03d}", per_shard) for i in range(shards)), ("val-000", 64)]:
        with wds.TarWriter(str(root / f"{name}.tar")) as writer:
            for _ in range(count):
                x = rng.standard_normal(32, dtype=np.float32)
                writer.write({"__key__": f"{number:08d}", "npy": x, "cls": int(x[0] > 0)})
                number += 1


def stateful(root: Path, workers: int, batches: int) -> float:
    """StatefulDataLoader over webdataset: its state after `batches` batches, then a fresh loader resumed."""
    import webdataset as wds
    from torchdata.stateful_dataloader import StatefulDataLoader

    def loader() -> StatefulDataLoader:
        pipeline = wds.WebDataset(sorted(str(p) for p in root.glob("train-*.tar")), shardshuffle=False,
                                  empty_check=False).decode().to_tuple("npy", "cls")
        return StatefulDataLoader(pipeline, batch_size=BATCH, num_workers=workers)

    state = None
    if batches:
        first = loader()
        served = iter(first)
        for _ in range(batches):
            next(served)
        state = first.state_dict()
        del served, first
    started = time.perf_counter()
    resumed = loader()
    if state is not None:
        resumed.load_state_dict(state)
    next(iter(resumed))
    return time.perf_counter() - started


def own(root: Path, workers: int, batches: int) -> float:
    """trainwright's TrainBatches over `data.name: shards`, started at batch `batches` of epoch 0."""
    import torchvision.transforms.v2  # noqa: F401 (its pipelines' import, before the clock as webdataset's is)

    from trainwright.data.loading import TrainBatches
    from trainwright.data.shards import shards

    started = time.perf_counter()
    data = shards(root, class_names=["a", "b"])
    loader = TrainBatches(data.train, BATCH, 0, 0, 1, workers)
    next(loader.epoch(0, batches, loader.indices(0, batches)))
    return time.perf_counter() - started


def _measure(kind: str, root: Path, workers: int, batches: int) -> float:
    code = (f"from benchmarks.stream_resume import {kind}; from pathlib import Path; "
            f"print('RESULT', {kind}(Path({str(root)!r}), {workers}, {batches}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    return float(out.split("RESULT ", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--per-shard", type=int, default=2500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    total = args.shards * args.per_shard
    at = int(total // BATCH * FRACTION)
    rows: dict[tuple[str, int], list[float]] = {(k, b): [] for k in ("stateful", "own") for b in (0, at)}
    with tempfile.TemporaryDirectory(prefix="trainwright-stream-bench-") as tmp:
        root = Path(tmp)
        write_shards(root, args.shards, args.per_shard)
        _measure("own", root, args.workers, 0)  # the header index is made once and cached: not timed
        for round_ in range(args.repeats):
            print(f"round {round_ + 1}/{args.repeats}", file=sys.stderr, flush=True)
            for kind, batches in rows:
                rows[(kind, batches)].append(_measure(kind, root, args.workers, batches))
    names = {"stateful": "torchdata StatefulDataLoader + webdataset (fast-forward)",
             "own": "trainwright `shards` (seek to the position)"}
    print(f"{total:,} samples in {args.shards} shards, batch {BATCH}, {args.workers} workers, "
          f"{args.repeats} interleaved rounds; seconds from making the loader to its first batch (median, range)\n")
    print(f"| loader | at batch 0 | resumed at batch {at:,} ({FRACTION:.0%}) |")
    print("|---|---:|---:|")
    for kind, name in names.items():
        cells = [f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for v in (rows[(kind, 0)], rows[(kind, at)])]
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    print("\n" + json.dumps({f"{k}@{b}": v for (k, b), v in rows.items()}))


if __name__ == "__main__":
    main()

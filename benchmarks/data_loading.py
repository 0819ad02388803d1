"""Data loading against hand-written loops (issue 21), each run in a fresh process, interleaved:

  * image folder: recipes/resnet_folder.yaml (resnet18, random crop and flip, `num_workers` workers) for one
    epoch against benchmarks/hand_data_loops.py's `folder` loop (ImageFolder, the same transforms, model,
    optimizer and workers): samples per second of the epoch (trainwright: its train/samples_per_second);
  * memory-mapped rows: `data.name: npy` over ROWS rows of 32 float32 features, an MLP, batch 256, one epoch,
    against the hand loop over the same .npy files served item by item by `num_workers` workers: seconds
    from the process's creation to the end of the first optimizer step, and samples per second.

    python -m benchmarks.data_loading [--images-per-class 400] [--rows 1000000] [--workers 2] [--repeats 3]

Prints a Markdown table (median and range of the repeats, and trainwright / hand loop)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# trainwright through its CLI, with the process's creation time as the start (as the hand loops take it):
# train/startup_seconds counts from trainwright.commands' import, so the seconds before it are added.
TRAINWRIGHT = (
    "import json, sys, time, psutil; boot = psutil.Process().create_time(); import trainwright.commands as c; "
    "print('BEFORE ' + json.dumps(time.time() - (time.perf_counter() - c.STARTED) - boot), flush=True); "
    "from trainwright.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _output(args: list[str]) -> str:
    result = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def hand(*arguments: object) -> dict[str, float]:
    out = _output([sys.executable, "-m", "benchmarks.hand_data_loops", *map(str, arguments)])
    return json.loads(out.split("RESULT ", 1)[1])


def trainwright(run_dir: Path, recipe: Path, *overrides: str) -> dict[str, float]:
    out = _output([sys.executable, "-c", TRAINWRIGHT, "train", str(recipe), *overrides, "logging.wandb=false",
                   "checkpoint.every_epochs=null", "trainer.epochs=1", "--run-dir", str(run_dir)])
    before = json.loads(out.split("BEFORE ", 1)[1].splitlines()[0])
    found: dict[str, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        found.update({k: v for k, v in json.loads(line).items() if k.startswith("train/")})
    return {
        "startup_seconds": before + found["train/startup_seconds"],
        "samples_per_second": found["train/samples_per_second"],
    }


def _cell(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-per-class", type=int, default=400)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainwright-data-bench-") as tmp:
        root = Path(tmp)
        _output([sys.executable, "examples/make_image_folder.py", str(root / "shapes"), "--per-class",
                 str(args.images_per_class)])
        rng = np.random.default_rng(0)
        inputs = rng.standard_normal((args.rows, 32), dtype=np.float32)
        np.save(root / "x.npy", inputs)
        np.save(root / "y.npy", (inputs[:, 0] > 0).astype(np.int64) + 2 * (inputs[:, 1] > 0))
        del inputs
        npy_recipe = root / "npy.yaml"
        npy_recipe.write_text(
            f"name: npy_mlp\ndata: {{name: npy, inputs: {root / 'x.npy'}, targets: {root / 'y.npy'}, "
            "val_fraction: 0.01, batch_size: 256}\nmodel: {name: mlp, in_features: 32, hidden: [64], out_features: 4}\n"
            "loss: {name: cross_entropy}\noptimizer: {name: adam, lr: 0.001}\ntrainer: {log_every_steps: 1000}\n"
        )
        rows: dict[str, list[dict[str, float]]] = {k: [] for k in ("folder hand", "folder tw", "npy hand", "npy tw")}
        for i in range(args.repeats):
            print(f"round {i + 1}/{args.repeats}", file=sys.stderr, flush=True)
            rows["folder hand"].append(hand("folder", root / "shapes", args.workers))
            rows["folder tw"].append(trainwright(root / f"folder-{i}", REPO / "recipes" / "resnet_folder.yaml",
                                                 f"data.root={root / 'shapes'}", f"data.num_workers={args.workers}"))
            rows["npy hand"].append(hand("npy", root / "x.npy", root / "y.npy", args.workers))
            rows["npy tw"].append(trainwright(root / f"npy-{i}", npy_recipe))

    def values(name: str, key: str) -> list[float]:
        return [r[key] for r in rows[name]]

    print(
        f"| measure ({args.repeats} interleaved rounds, {args.workers} workers) "
        "| hand-written loop | trainwright | trainwright / hand |"
    )
    print("|---|---|---|---|")
    for label, name, key, digits in (
        (f"image folder, resnet18, {3 * args.images_per_class} images: samples/s", "folder", "samples_per_second", 1),
        (f"npy, {args.rows:,} rows: seconds to the first step", "npy", "startup_seconds", 2),
        (f"npy, {args.rows:,} rows: samples/s", "npy", "samples_per_second", 0),
    ):
        ratio = statistics.median(values(f"{name} tw", key)) / statistics.median(values(f"{name} hand", key))
        by_hand, by_tw = _cell(values(f"{name} hand", key), digits), _cell(values(f"{name} tw", key), digits)
        print(f"| {label} | {by_hand} | {by_tw} | {ratio:.3f} |")


if __name__ == "__main__":
    main()

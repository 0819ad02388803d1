"""Training-loop speed: trainwright vs a hand-written loop vs the tutorial loop, side by side in one run.

Each workload trains one epoch with the same model, data, batch size and optimizer three ways:
  tutorial     TensorDataset + DataLoader(shuffle=True), the loop of the PyTorch tutorials
  hand-written whole-tensor batches from a shuffled index, the fastest plain-PyTorch loop we know
  trainwright  `trainwright.training.train` on a recipe (its `train/epoch_seconds`: the training pass only)
The three run interleaved, `--repeats` times, and the median epoch time of each is reported with the
ratios trainwright/hand-written and trainwright/tutorial (below 1.0 means trainwright is faster).

    python benchmarks/compare_loops.py --out benchmarks/results-cpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from trainwright.components import build_data, build_model, build_optimizer, build_scoring
from trainwright.recipe import load_recipe
from trainwright.training import train

ROOT = Path(__file__).resolve().parent.parent
QUIET = ["logging.wandb=false", "checkpoint.every_steps=null", "checkpoint.every_epochs=null", "trainer.epochs=1"]


def write_fashion_mnist(root: Path, train: int, test: int) -> None:
    """Random images and labels in the real IDX format under root/FashionMNIST/raw/."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    for prefix, count in (("train", train), ("t10k", test)):
        images = torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 10, (count,), dtype=torch.uint8, generator=generator)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, count, 28, 28) + images.numpy().tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + labels.numpy().tobytes())


def _setup(recipe_path: Path, overrides: list[str]):
    recipe = load_recipe(recipe_path, overrides)
    bundle = build_data(recipe)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe)
    return recipe, bundle.train, model, build_scoring(recipe, bundle).loss_fn, build_optimizer(recipe, model)


def tutorial_epoch(recipe_path: Path, overrides: list[str]) -> float:
    recipe, train, model, loss_fn, optimizer = _setup(recipe_path, overrides)
    loader = DataLoader(TensorDataset(train.inputs, train.targets), batch_size=recipe.data.batch_size, shuffle=True)
    model.train()
    started = time.perf_counter()
    for inputs, targets in loader:
        loss = loss_fn(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def hand_written_epoch(recipe_path: Path, overrides: list[str]) -> float:
    recipe, train, model, loss_fn, optimizer = _setup(recipe_path, overrides)
    batch = recipe.data.batch_size
    model.train()
    started = time.perf_counter()
    order = torch.randperm(len(train.inputs))
    for first in range(0, len(order) - batch + 1, batch):
        index = order[first : first + batch]
        loss = loss_fn(model(train.inputs[index]), train.targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def trainwright_epoch(recipe_path: Path, overrides: list[str]) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        train(load_recipe(recipe_path, overrides), Path(run_dir) / "run")
        records = [json.loads(line) for line in (Path(run_dir) / "run" / "metrics.jsonl").read_text().splitlines()]
    return next(r["train/epoch_seconds"] for r in records if "train/epoch_seconds" in r)


LOOPS: dict[str, Callable[[Path, list[str]], float]] = {
    "tutorial": tutorial_epoch,
    "hand-written": hand_written_epoch,
    "trainwright": trainwright_epoch,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write a Markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    data_root = Path(tempfile.mkdtemp())
    write_fashion_mnist(data_root, train=20_000, test=1_000)
    workloads = {
        "heart MLP 2-72-36-1, 80k points, batch 64": (ROOT / "recipes/heart.yaml", QUIET),
        "FashionMNIST MLP 784-512-512-10, 20k images, batch 64": (
            ROOT / "recipes/fashion_mnist_mlp.yaml", [*QUIET, f"data.root={data_root}"]),
        "FashionMNIST LeNet, 20k images, batch 256": (
            ROOT / "recipes/fashion_mnist_lenet.yaml", [*QUIET, f"data.root={data_root}"]),
    }
    rows = []
    for title, (recipe_path, overrides) in workloads.items():
        times: dict[str, list[float]] = {name: [] for name in LOOPS}
        for _ in range(args.repeats):
            for name, loop in LOOPS.items():
                times[name].append(loop(recipe_path, overrides))
        median = {name: statistics.median(values) for name, values in times.items()}
        rows.append((title, median))
        print(title, {k: round(v, 3) for k, v in median.items()}, flush=True)

    lines = [
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, median of {args.repeats} interleaved repeats, one epoch each.",
        "",
        "| workload | tutorial s | hand-written s | trainwright s | trainwright / hand-written | trainwright / tutorial |",
        "|---|---|---|---|---|---|",
    ]
    for title, m in rows:
        lines.append(
            f"| {title} | {m['tutorial']:.2f} | {m['hand-written']:.2f} | {m['trainwright']:.2f} | "
            f"{m['trainwright'] / m['hand-written']:.2f} | {m['trainwright'] / m['tutorial']:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()

"""One epoch of each loop, all from the same recipe: the same data, model, initial weights, loss,
optimizer and batch size. Each returns the seconds of the epoch's training pass (data loading included)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from benchmarks.workloads import Workload
from trainwright.components import build_data, build_model, build_optimizer, build_scoring
from trainwright.recipe import Recipe, load_recipe
from trainwright.run.tracking import read_metrics


@dataclass
class Setup:
    """What every plain loop starts from: the training split as tensors and fresh components."""

    recipe: Recipe
    inputs: torch.Tensor
    targets: torch.Tensor
    model: nn.Module
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer

    @property
    def batch_size(self) -> int:
        return self.recipe.data.batch_size

    def tensor_loader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.inputs, self.targets), batch_size=self.batch_size, shuffle=True)


def setup(workload: Workload) -> Setup:
    recipe = load_recipe(workload.recipe, list(workload.overrides))
    data = build_data(recipe)
    torch.manual_seed(recipe.seed)  # trainwright seeds the same way before it builds the model
    model = build_model(recipe, data.task)
    loss_fn = build_scoring(recipe, data.task).loss_fn
    return Setup(recipe, data.train.inputs, data.train.targets, model, loss_fn, build_optimizer(recipe, model))


def _timed_epoch(s: Setup, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The tutorials' step (zero_grad, forward, backward, step) over `batches`, timed."""
    s.model.train()
    started = time.perf_counter()
    for inputs, targets in batches:
        loss = s.loss_fn(s.model(inputs), targets)
        s.optimizer.zero_grad()
        loss.backward()
        s.optimizer.step()
    return time.perf_counter() - started


class HeartFrame(Dataset):
    """The heart points as a tutorial serves rows of a pandas DataFrame: one `df.iloc[i]` per item."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        import pandas as pd

        self.df = pd.DataFrame({"x": inputs[:, 0].numpy(), "y": inputs[:, 1].numpy(), "inside": targets[:, 0].numpy()})

    def __len__(self) -> int:
        return len(self.df)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.df.iloc[i]
        return torch.tensor([row["x"], row["y"]], dtype=torch.float32), torch.tensor(
            [row["inside"]], dtype=torch.float32
        )


def _per_item_dataset(workload: Workload, s: Setup) -> Dataset:
    if workload.kind == "heart":
        return HeartFrame(s.inputs, s.targets)
    from torchvision import datasets
    from torchvision.transforms import ToTensor

    return datasets.FashionMNIST(s.recipe.data.kwargs()["root"], train=True, transform=ToTensor())


def tutorial(workload: Workload) -> dict[str, Any]:
    s = setup(workload)
    loader = DataLoader(_per_item_dataset(workload, s), batch_size=s.batch_size, shuffle=True)
    return {"seconds": _timed_epoch(s, loader)}


def tensor_dataset(workload: Workload) -> dict[str, Any]:
    s = setup(workload)
    return {"seconds": _timed_epoch(s, s.tensor_loader())}


def hand_written(workload: Workload) -> dict[str, Any]:
    """Whole-tensor batches from one shuffled index: the leanest plain-PyTorch loop."""
    s = setup(workload)
    s.model.train()
    started = time.perf_counter()
    order, batch = torch.randperm(len(s.inputs)), s.batch_size
    for first in range(0, len(order) - batch + 1, batch):
        index = order[first : first + batch]
        loss = s.loss_fn(s.model(s.inputs[index]), s.targets[index])
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        s.optimizer.step()
    return {"seconds": time.perf_counter() - started}


def nanogpt(workload: Workload) -> dict[str, Any]:
    """A nanoGPT-style loop on the same windows: logits.view(-1, V) against targets.view(-1), backward,
    clip_grad_norm_ at the recipe's grad_clip, step; tokens per second alongside."""
    s = setup(workload)
    s.model.train()
    clip, (windows, context) = s.recipe.trainer.grad_clip, s.inputs.shape
    started = time.perf_counter()
    order, batch = torch.randperm(windows), s.batch_size
    steps = 0
    for first in range(0, windows - batch + 1, batch):
        index = order[first : first + batch]
        x, y = s.inputs[index], s.targets[index]
        logits = s.model(x)
        loss = nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(s.model.parameters(), clip)
        s.optimizer.step()
        steps += 1
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens_per_second": steps * batch * context / seconds}


def accelerate(workload: Workload) -> dict[str, Any]:
    """The loop of Accelerate's README: prepare(model, optimizer, dataloader), accelerator.backward."""
    from accelerate import Accelerator

    s = setup(workload)
    accelerator = Accelerator(cpu=True)
    model, optimizer, loader = accelerator.prepare(s.model, s.optimizer, s.tensor_loader())
    model.train()
    started = time.perf_counter()
    for inputs, targets in loader:
        optimizer.zero_grad()
        loss = s.loss_fn(model(inputs), targets)
        accelerator.backward(loss)
        optimizer.step()
    return {"seconds": time.perf_counter() - started}


def lightning(workload: Workload) -> dict[str, Any]:
    from benchmarks.lightning_row import fit_one_epoch

    s = setup(workload)
    return {"seconds": fit_one_epoch(s.model, s.loss_fn, s.optimizer, s.tensor_loader())}


def _train_trainwright(workload: Workload, *extra: str) -> list[dict[str, Any]]:
    """`trainwright.training.start.train` on the recipe (with `extra` overrides); the records of its metrics.jsonl."""
    from trainwright.training.start import train  # imported here: the other rows do not load Accelerate

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        train(load_recipe(workload.recipe, [*workload.overrides, *extra]), run_dir)
        return read_metrics(run_dir / "metrics.jsonl")


def _values(records: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in records if key in r]


def trainwright(workload: Workload) -> dict[str, Any]:
    """trainwright's own `train/epoch_seconds` (the training pass only), and the checkpoint figures it logs."""
    records = _train_trainwright(workload)
    return {
        "seconds": _values(records, "train/epoch_seconds")[0],
        "stall_seconds": _values(records, "checkpoint/stall_seconds"),
        "write_seconds": _values(records, "checkpoint/write_seconds"),
    }


def trainwright_nondeterministic(workload: Workload) -> dict[str, Any]:
    """`trainer.deterministic=false`: what torch's deterministic mode costs trainwright's epoch."""
    return {"seconds": _values(_train_trainwright(workload, "trainer.deterministic=false"), "train/epoch_seconds")[0]}


def trainwright_compiled(workload: Workload) -> dict[str, Any]:
    """`trainer.compile=true` for two epochs: the second epoch's seconds (compiled code only) and the first's
    (torch.compile's work included; torch caches compiled code on disk, so later repeats compile faster)."""
    first, second = _values(_train_trainwright(workload, "trainer.compile=true", "trainer.epochs=2"),
                            "train/epoch_seconds")
    return {"seconds": second, "first_epoch_seconds": first}


LOOPS: dict[str, Callable[[Workload], dict[str, Any]]] = {
    "tutorial": tutorial, "tensor-dataset": tensor_dataset, "hand-written": hand_written,
    "accelerate": accelerate, "lightning": lightning, "trainwright": trainwright,
    "trainwright-nondeterministic": trainwright_nondeterministic, "trainwright-compile": trainwright_compiled,
    "nanogpt": nanogpt,
}

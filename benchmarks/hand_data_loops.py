"""The hand-written loops the data benchmark (benchmarks/data_loading.py) compares trainwright with, each run
in a fresh process; it prints one line `RESULT {json}`:

    python -m benchmarks.hand_data_loops folder ROOT WORKERS     # resnet18 on an image folder, one epoch
    python -m benchmarks.hand_data_loops npy INPUTS TARGETS WORKERS  # an MLP on memory-mapped rows, one epoch

`startup_seconds`: from the process's creation to the end of the first optimizer step;
`samples_per_second`: the epoch's samples over the loop's seconds."""

from __future__ import annotations

import json
import sys
import time

import psutil

BOOT = psutil.Process().create_time()

import numpy as np  # noqa: E402  (after BOOT: the imports count in the start-up)
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402


def _loop(loader: DataLoader, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    loss_fn, first, samples = nn.CrossEntropyLoss(), None, 0
    started = time.perf_counter()
    for inputs, targets in loader:
        optimizer.zero_grad()
        loss_fn(model(inputs), targets).backward()
        optimizer.step()
        samples += len(targets)
        if first is None:
            first = time.time() - BOOT
    seconds = time.perf_counter() - started
    return {"startup_seconds": first, "samples_per_second": samples / seconds, "samples": samples}


def folder(root: str, workers: int) -> dict[str, float]:
    """recipes/resnet_folder.yaml written by hand: ImageFolder, the same v2 transforms, resnet18, SGD."""
    from torchvision import datasets, models
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms import v2

    transform = v2.Compose([
        v2.RandomResizedCrop(32, scale=(0.6, 1.0), antialias=True), v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    data = datasets.ImageFolder(f"{root}/train", transform=transform,
                                loader=lambda path: decode_image(path, mode=ImageReadMode.RGB))
    loader = DataLoader(data, batch_size=64, shuffle=True, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = models.resnet18(weights=None, num_classes=3)
    return _loop(loader, model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))


class Rows(Dataset):
    """Rows of memory-mapped arrays, one at a time (what a user writes first)."""

    def __init__(self, inputs: str, targets: str) -> None:
        self.inputs, self.targets = np.load(inputs, mmap_mode="r"), np.load(targets, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.inputs[index])), int(self.targets[index])


def rows(inputs: str, targets: str, workers: int) -> dict[str, float]:
    """An MLP (in-64-classes) on memory-mapped rows served item by item, batch 256, Adam."""
    data = Rows(inputs, targets)
    loader = DataLoader(data, batch_size=256, shuffle=True, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0)
    torch.manual_seed(0)
    classes = int(np.load(targets, mmap_mode="r")[:1000].max()) + 1
    model = nn.Sequential(nn.Flatten(), nn.Linear(data.inputs.shape[1], 64), nn.ReLU(), nn.Linear(64, classes))
    return _loop(loader, model, torch.optim.Adam(model.parameters(), lr=0.001))


if __name__ == "__main__":
    kind, *arguments = sys.argv[1:]
    result = (
        folder(arguments[0], int(arguments[1]))
        if kind == "folder"
        else rows(arguments[0], arguments[1], int(arguments[2]))
    )
    print("RESULT " + json.dumps(result), flush=True)

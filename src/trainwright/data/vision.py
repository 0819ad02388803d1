"""torchvision image data sets, read from local files (never downloaded unless asked)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

import torch

from trainwright.data.bundle import DataBundle, Task, TensorSplit
from trainwright.errors import UserError
from trainwright.files import atomic_open

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)


def _as_tensors(split: Any) -> TensorSplit:
    """The whole split as float images in [0, 1] of shape (N, 1, 28, 28), exactly what ToTensor() gives."""
    images = split.data.unsqueeze(1).to(torch.float32).div_(255)
    return TensorSplit(images, split.targets.clone())


def _gunzip_missing(raw: Path) -> None:
    """torchvision reads only uncompressed IDX files: unpack any `.gz` whose plain file is missing."""
    for name in _FASHION_MNIST_FILES:
        packed, plain = raw / f"{name}.gz", raw / name
        if packed.is_file() and not plain.exists():
            try:
                with gzip.open(packed, "rb") as source, atomic_open(plain, "wb") as target:
                    shutil.copyfileobj(source, target)
            except (OSError, EOFError) as exc:  # not gzip, or cut short (atomic_open removed its temp file)
                raise UserError(f"cannot unpack {packed}: {exc}; replace the damaged file") from None


def fashion_mnist(root: str = "data", download: bool = False) -> DataBundle:
    """FashionMNIST from `<root>/FashionMNIST/raw/` (IDX files; .gz ones are unpacked beside them); the test
    split serves for validation."""
    from torchvision import datasets  # imported here: it takes seconds, and most commands never need it

    raw = Path(root) / "FashionMNIST" / "raw"
    _gunzip_missing(raw)
    try:
        train = datasets.FashionMNIST(root, train=True, download=download)
        test = datasets.FashionMNIST(root, train=False, download=download)
    except RuntimeError as exc:
        if "not found" not in str(exc) and "download" not in str(exc).lower():
            raise UserError(f"cannot read FashionMNIST from {raw}/: {exc}; replace the damaged files") from None
        raise UserError(
            f"FashionMNIST not found: expected the files {', '.join(_FASHION_MNIST_FILES)} (or their .gz) "
            f"in {raw}/. Put them there (set data.root to their parent's parent), or set data.download=true "
            "to fetch them, which needs network access."
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read or download FashionMNIST in {raw}/: {exc}") from None
    except (AssertionError, ValueError) as exc:  # torchvision asserts on a file that is not IDX
        raise UserError(f"{raw}/ holds a file that is not in IDX format ({str(exc) or 'bad header'}); replace it") from None
    test_split = _as_tensors(test)
    return DataBundle(
        train=_as_tensors(train), val=test_split, test=test_split, task=Task("multiclass", FASHION_MNIST_CLASSES)
    )

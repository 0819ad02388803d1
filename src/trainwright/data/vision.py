"""FashionMNIST from local IDX files, plain or gzipped (never downloaded unless asked).

The files are read directly (a `.gz` through its gzip stream), so nothing is written into the data
folder: read-only shared data sets work, and a damaged file is one message naming it. torchvision is
used only to download (data.download=true); its reader takes plain files only.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from trainwright.data.bundle import DataBundle, Task, TensorSplit
from trainwright.errors import UserError

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)
_UNSIGNED_BYTE = 0x08  # the IDX type code of uint8 values


def _find(raw: Path, name: str) -> Path | None:
    """The plain file, else its .gz, else None."""
    return next((p for p in (raw / name, raw / f"{name}.gz") if p.is_file()), None)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (plain or .gz) as an array: magic 0x0000 08 <ndim>, the dimensions
    as big-endian uint32, then the values. Anything else is a UserError naming the file."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as file:
            data = file.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise UserError(f"cannot read {path}: {exc}; replace the damaged file") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != _UNSIGNED_BYTE or not 1 <= data[3] <= 4:
        raise UserError(f"{path} is not an IDX file of unsigned bytes (bad header); replace it")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header].ljust(4 * ndim, b"\0"))
    if len(data) - header != int(np.prod(dims)):
        raise UserError(
            f"{path} is damaged or truncated: its header announces {'x'.join(map(str, dims))} values, "
            f"it holds {max(0, len(data) - header)}; replace it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _split(raw: Path, images_file: Path, labels_file: Path) -> TensorSplit:
    """Images as floats in [0, 1] of shape (N, 1, 28, 28) (what ToTensor() gives), labels as int64."""
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(
            f"{raw}/: {images_file.name} holds {images.shape} and {labels_file.name} {labels.shape}; expected "
            "N images of 28x28 and N labels"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise UserError(f"{labels_file} holds the label {labels.max()}; FashionMNIST has classes 0-9")
    inputs = torch.from_numpy(images.copy()).unsqueeze(1).to(torch.float32).div_(255)
    return TensorSplit(inputs, torch.from_numpy(labels.astype(np.int64)))


def _download(root: str) -> None:
    from torchvision import datasets  # imported here: it takes seconds, and reading never needs it

    try:
        for train in (True, False):
            datasets.FashionMNIST(root, train=train, download=True)
    except (OSError, RuntimeError) as exc:
        raise UserError(f"cannot download FashionMNIST into {root}: {exc}") from None


# registered as "fashion_mnist" in components.py; its `root` is pinned (data/paths.py)
def fashion_mnist(root: str = "data", download: bool = False) -> DataBundle:
    """FashionMNIST from `<root>/FashionMNIST/raw/` (IDX files, plain or .gz); the test split serves for
    validation."""
    raw = Path(root) / "FashionMNIST" / "raw"
    if download and any(_find(raw, name) is None for name in _FASHION_MNIST_FILES):
        _download(root)
    files = [path for path in (_find(raw, name) for name in _FASHION_MNIST_FILES) if path is not None]
    if len(files) < len(_FASHION_MNIST_FILES):
        raise UserError(
            f"FashionMNIST not found: expected the files {', '.join(_FASHION_MNIST_FILES)} (or their .gz) "
            f"in {raw}/. Put them there (set data.root to their parent's parent), or set data.download=true "
            "to fetch them, which needs network access."
        )
    train_images, train_labels, test_images, test_labels = files
    test = _split(raw, test_images, test_labels)
    return DataBundle(
        train=_split(raw, train_images, train_labels), val=test, test=test,
        task=Task("multiclass", FASHION_MNIST_CLASSES), sources=dict(zip(_FASHION_MNIST_FILES, files)),
    )

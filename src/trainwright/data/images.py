"""New images for a FashionMNIST run: image files of any size or mode (PNG, JPEG, ...), a folder of them,
PIL images, or an IDX file. Each becomes what the training data are: one grey channel of 28x28 pixels
as floats in [0, 1] (pixel / 255, as ToTensor() gives). A picture of another size is resized to 28x28
(no cropping) by averaging the pixels each output pixel covers (PIL's BOX filter: a 56x56 copy of a
28x28 image gives the image back exactly). Pillow comes with torchvision; it is imported only here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainwright.data.input_batch import InputBatch
from trainwright.data.vision import read_idx
from trainwright.errors import UserError

SIDE = 28
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_IDX_NAMES = ("-ubyte", "-ubyte.gz", ".idx", ".idx.gz")


def pixels(image: Any) -> torch.Tensor:
    """A PIL image as a (1, 28, 28) float tensor in [0, 1]."""
    from PIL import Image

    grey = image.convert("L")
    if grey.size != (SIDE, SIDE):
        grey = grey.resize((SIDE, SIDE), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(grey, dtype=np.uint8).copy()).unsqueeze(0).to(torch.float32).div_(255)


def _open(path: Path) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return pixels(image)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(
            f"{path} is not an image that can be read ({exc}); give a PNG or JPEG file, a folder of them, or an "
            "IDX file"
        ) from None


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"--input {folder} holds no images ({', '.join(IMAGE_SUFFIXES)} files)")
    return files


def _idx_batches(path: Path, batch_size: int) -> Iterator[InputBatch]:
    images = read_idx(path)
    if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE) or len(images) == 0:
        raise UserError(f"{path} holds {images.shape} values; expected N images of {SIDE}x{SIDE}")
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        inputs = torch.from_numpy(chunk.copy()).unsqueeze(1).to(torch.float32).div_(255)
        ids = [f"{path.name}[{start + i}]" for i in range(len(chunk))]
        yield InputBatch(ids, inputs, ids.__getitem__)


def fashion_images(source: Any, record: dict[str, Any], batch_size: int) -> Iterator[InputBatch]:
    """An image file, a folder of images, an IDX file of 28x28 images, or PIL images / paths in a list."""
    if isinstance(source, Path):
        if source.is_dir():
            source = _image_files(source)
        elif source.name.lower().endswith(_IDX_NAMES):
            yield from _idx_batches(source, batch_size)
            return
        else:
            source = [source]
    items = list(source) if isinstance(source, (list, tuple)) else [source]
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        tensors = [_open(Path(item)) if isinstance(item, (str, Path)) else pixels(item) for item in chunk]
        ids = [
            Path(item).name if isinstance(item, (str, Path)) else f"image {start + i}" for i, item in enumerate(chunk)
        ]
        yield InputBatch(ids, torch.stack(tensors), ids.__getitem__)

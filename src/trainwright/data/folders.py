"""Image folders: `data.name: image_folder` over `<root>/train/` and `<root>/val/` (or one folder and
`val_fraction`), each holding one subfolder of images per class (torchvision's ImageFolder layout).
Images are decoded by torchvision (uint8, RGB or grey) and go through the recipe's train or eval pipeline
(data/transforms.py); random transforms draw from the per-item generators (data/loading.py), so a resumed
run sees the same augmented items.

The split fingerprints itself by its listing: every file's path, size and mtime (no image is read at
start-up); changing, adding or removing an image changes it. The eval pipeline and the image mode are
recorded in data.json, so `predict --input` reads new images as the validation images were read."""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from trainwright.data.arguments import check_data_arguments, check_val_fraction
from trainwright.data.bundle import DataBundle, Task
from trainwright.data.input_batch import InputBatch
from trainwright.data.transforms import build_pipeline
from trainwright.errors import UserError

DEFAULT_PIPELINE: list[dict[str, Any]] = [{"name": "ToDtype", "dtype": "float32", "scale": True}]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ImageMode = Literal["rgb", "grey"]


def decode(path: str, mode: ImageMode) -> torch.Tensor:
    """An image file as a uint8 tensor (channels, height, width)."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(path, mode=ImageReadMode.RGB if mode == "rgb" else ImageReadMode.GRAY)
    except (RuntimeError, OSError, ValueError) as exc:
        raise UserError(f"{path} is not an image that can be read ({exc}); replace or remove it") from None


class ImageItems(Dataset):
    """Images (path, class index), decoded and transformed one at a time."""

    def __init__(self, folder: Path, samples: list[tuple[str, int]], transform: Any, mode: ImageMode, key: str) -> None:
        self.folder, self.samples, self.transform, self.mode, self.key = folder, samples, transform, mode, key

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = self.transform(decode(path, self.mode))
        if not (isinstance(image, torch.Tensor) and image.is_floating_point()):
            raise UserError(
                f"{self.key} gives {getattr(image, 'dtype', type(image).__name__)} images; end it with "
                "{name: ToDtype, dtype: float32, scale: true} (and Normalize) so the model gets floats"
            )
        return image, label

    def fingerprint(self) -> dict[str, Any]:
        """The listing: each file's path (from the data set's folder, which may move), size, mtime and class
        (no image is read)."""
        digest = hashlib.sha256()
        for path, label in self.samples:
            status = os.stat(path)
            name = os.path.relpath(path, self.folder)
            digest.update(f"{name}\0{status.st_size}\0{status.st_mtime_ns}\0{label}\n".encode())
        return {"files": len(self.samples), "listing_sha256": digest.hexdigest()}


def _listing(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, samples) of a folder of class subfolders, as torchvision's ImageFolder finds them."""
    from torchvision.datasets import ImageFolder

    if not folder.is_dir():
        raise UserError(f"data.root: {folder} is not a folder; expected class subfolders of images in it")
    try:
        found = ImageFolder(str(folder), loader=str, allow_empty=True)
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"data.root: {folder}: {exc}") from None
    if classes is not None and found.classes != classes:
        raise UserError(
            f"data.root: {folder} holds the classes {found.classes}, the training folder {classes}; "
            "give both the same class subfolders"
        )
    if not found.samples:
        raise UserError(f"data.root: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) in class subfolders")
    return found.classes, found.samples


def _training_classes(folder: Path, classes: list[str], samples: list[tuple[str, int]]) -> None:
    """The classes a classifier trains on: at least two, each with images (an empty class folder would be a
    class the model is asked to output but never sees)."""
    if len(classes) < 2:
        raise UserError(
            f"data.root: {folder} holds one class folder ({classes[0]}/); a classifier needs at least two class "
            "subfolders of images"
        )
    empty = sorted(set(classes) - {classes[label] for _, label in samples})
    if empty:
        others = f" (nor do {', '.join(empty[1:])})" if len(empty) > 1 else ""
        raise UserError(
            f"data.root: the class folder {folder / empty[0]} holds no images ({', '.join(IMAGE_SUFFIXES)}){others}; "
            "add images to it or remove it"
        )


def check_arguments(kwargs: dict[str, Any]) -> None:
    """The recipe's pipelines and arguments, checked without reading any image (`trainwright check`)."""
    check_data_arguments(kwargs)
    for key in ("train_transforms", "eval_transforms"):
        build_pipeline(kwargs.get(key) or DEFAULT_PIPELINE, f"data.{key}")


# registered as "image_folder" in components.py; its `root` is pinned (data/paths.py)
def image_folder(
    root: Path,
    train_transforms: list[dict[str, Any]] | None = None,
    eval_transforms: list[dict[str, Any]] | None = None,
    val_fraction: float | None = None,
    mode: ImageMode = "rgb",
    split_seed: int = 0,
) -> DataBundle:
    """Class folders under `root/train` and `root/val`; or, with `val_fraction`, under `root` itself, of which
    that fraction (drawn with `split_seed`) validates. The pipelines default to ToDtype(float32, scale)."""
    train_pipeline = build_pipeline(train_transforms or DEFAULT_PIPELINE, "data.train_transforms")
    eval_steps = eval_transforms or DEFAULT_PIPELINE
    eval_pipeline = build_pipeline(eval_steps, "data.eval_transforms")
    root = Path(root)
    if val_fraction is None:
        if not (root / "train").is_dir():
            raise UserError(
                f"data.root: {root} has no train/ folder; give one with train/ and val/ class folders, or set "
                "data.val_fraction to validate on part of the class folders under data.root"
            )
        classes, train = _listing(root / "train")
        _training_classes(root / "train", classes, train)
        _, val = _listing(root / "val", classes)
    else:
        check_val_fraction(val_fraction)
        classes, samples = _listing(root)
        _training_classes(root, classes, samples)
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(split_seed)).tolist()
        cut = max(1, round(len(samples) * val_fraction))
        val = [samples[i] for i in sorted(order[:cut])]
        train = [samples[i] for i in sorted(order[cut:])]
    return DataBundle(
        train=ImageItems(root, train, train_pipeline, mode, "data.train_transforms"),
        val=ImageItems(root, val, eval_pipeline, mode, "data.eval_transforms"),
        task=Task("multiclass", tuple(classes)),
        describe_input=lambda i: Path(val[i][0]).name,
        preprocessing={"eval_transforms": eval_steps, "mode": mode},
    )


# --- new images for a trained run -----------------------------------------------------------------


def _paths(source: Path) -> list[Path]:
    """An image file, the images in a folder, or the images a glob pattern matches."""
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        where = f"--input {source} holds no images"
    elif source.exists():
        files = [source]
        where = ""
    else:
        files = sorted(Path(p) for p in glob.glob(str(source), recursive=True) if Path(p).is_file())
        where = f"--input {source} matches no files"
    if not files:
        raise UserError(f"{where} ({', '.join(IMAGE_SUFFIXES)} files)")
    return files


def _image_tensor(item: Any, mode: ImageMode) -> torch.Tensor:
    """A path or a PIL image as a uint8 tensor (channels, height, width)."""
    if isinstance(item, (str, Path)):
        return decode(str(item), mode)
    from torchvision.transforms.v2.functional import pil_to_tensor

    return pil_to_tensor(item.convert("RGB" if mode == "rgb" else "L"))


def folder_images(source: Any, record: dict[str, Any], batch_size: int) -> Iterator[InputBatch]:
    """New images for an image-folder run: an image file, a folder of images, a glob pattern, PIL images or
    a list of paths and PIL images, read through the run's eval pipeline (from data.json)."""
    statistics = record.get("preprocessing", {})
    pipeline = build_pipeline(statistics.get("eval_transforms", DEFAULT_PIPELINE), "data.eval_transforms")
    mode = statistics.get("mode", "rgb")
    items: list[Any] = _paths(source) if isinstance(source, Path) else (
        list(source) if isinstance(source, (list, tuple)) else [source]
    )
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        with torch.random.fork_rng(devices=[]):
            inputs = torch.stack([pipeline(_image_tensor(item, mode)) for item in chunk])
        ids = [
            Path(item).name if isinstance(item, (str, Path)) else f"image {start + i}" for i, item in enumerate(chunk)
        ]
        yield InputBatch(ids, inputs, ids.__getitem__)

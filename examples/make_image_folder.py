"""Make a small image-folder data set to try `recipes/resnet_folder.yaml` on: PNG pictures of three kinds of
shapes (disc, square, ring) in random colours, sizes and places on a noisy background, in class folders:

    python examples/make_image_folder.py data/shapes            # 200 train + 50 val images per class
    python examples/make_image_folder.py data/shapes --per-class 40 --size 16

writes data/shapes/train/<class>/*.png and data/shapes/val/<class>/*.png (the folder must not exist yet)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("disc", "square", "ring")


def picture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One RGB picture (size x size, uint8) of a shape of `kind`."""
    image = rng.integers(0, 60, (size, size, 3)).astype(np.float32)
    radius = rng.uniform(0.2, 0.35) * size
    cy, cx = rng.uniform(radius, size - radius, 2)
    y, x = np.mgrid[:size, :size]
    distance = np.hypot(y - cy, x - cx)
    if kind == "disc":
        mask = distance <= radius
    elif kind == "square":
        mask = (abs(y - cy) <= radius * 0.85) & (abs(x - cx) <= radius * 0.85)
    else:
        mask = (distance <= radius) & (distance >= radius * 0.55)
    image[mask] = rng.integers(120, 256, 3)
    return image.clip(0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--per-class", type=int, default=200, help="training images per class (val: a quarter)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.folder.exists():
        print(f"{args.folder} exists already; give a new folder", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    for split, count in (("train", args.per_class), ("val", max(1, args.per_class // 4))):
        for kind in CLASSES:
            folder = args.folder / split / kind
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(picture(kind, args.size, rng)).save(folder / f"{kind}_{i:04d}.png")
    print(f"Wrote {len(CLASSES)} classes of {args.size}x{args.size} PNGs to {args.folder}/train and {args.folder}/val")
    return 0


if __name__ == "__main__":
    sys.exit(main())

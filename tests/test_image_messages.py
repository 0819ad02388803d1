"""Image folders and transforms that cannot train are one message naming the real cause (issue 26, items 6
and 9): a transform that fails on an image names its step and arguments, a Lambda is refused, an empty
class folder or a single class is said to be so (not blamed on model.out_features)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from reliability_helpers import user_error


def image_recipe(folder: Path, classes: tuple[str, ...] = ("a", "b"), **data: object) -> Path:
    """Four 8x8 RGB images per class under folder/images/{train,val}/<class>/, an mlp over them."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            (folder / "images" / split / name).mkdir(parents=True, exist_ok=True)
            for number in range(4):
                pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / "images" / split / name / f"{number}.png")
    recipe = {
        "name": "images",
        "data": {"name": "image_folder", "root": str(folder / "images"), "batch_size": 4, **data},
        "model": {"name": "mlp", "in_features": 3 * 8 * 8, "hidden": [8], "out_features": len(classes)},
        "loss": {"name": "cross_entropy"}, "optimizer": {"name": "sgd", "lr": 0.1},
        "trainer": {"max_steps": 1}, "logging": {"wandb": False},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return folder / "recipe.yaml"


FLOATS = {"name": "ToDtype", "dtype": "float32", "scale": True}
FAILING = {
    "Resize -5": ([{"name": "Resize", "size": -5}, FLOATS],
                  "data.train_transforms[0]: Resize with {'size': -5} fails on an image of shape (3, 8, 8)"),
    "Normalize std 0": ([FLOATS, {"name": "Normalize", "mean": [0.5], "std": [0.0]}],
                        "data.train_transforms[1]: Normalize with {'mean': [0.5], 'std': [0.0]} fails"),
    "RandomResizedCrop scale": ([{"name": "RandomResizedCrop", "size": 8, "scale": [2.0, 1.0]}, FLOATS],
                                "data.train_transforms[0]: RandomResizedCrop with {'scale': [2.0, 1.0], 'size': 8}"),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", FAILING)
def test_a_transform_that_fails_on_an_image_names_its_step(capsys, tmp_path, case):
    steps, fragment = FAILING[case]
    recipe = image_recipe(tmp_path, train_transforms=steps)
    user_error(capsys, "train", recipe, "--run-dir", tmp_path / "run", fragments=(fragment, "fix its arguments"))
    assert not (tmp_path / "run").exists()


def test_a_lambda_transform_is_refused_at_check(capsys, tmp_path):
    recipe = image_recipe(tmp_path, train_transforms=[{"name": "Lambda", "lambd": "print"}])
    user_error(capsys, "check", recipe, fragments=(
        "data.train_transforms[0].name: Lambda cannot be used in a recipe: it takes a Python function",))


def test_an_empty_class_folder_is_named(capsys, tmp_path):
    recipe = image_recipe(tmp_path)
    (tmp_path / "images" / "train" / "c").mkdir()
    (tmp_path / "images" / "val" / "c").mkdir()
    message = user_error(capsys, "train", recipe, "--run-dir", tmp_path / "run",
                         fragments=(f"the class folder {tmp_path / 'images' / 'train' / 'c'} holds no images",))
    assert "out_features" not in message


def test_a_single_class_is_named(capsys, tmp_path):
    recipe = image_recipe(tmp_path, classes=("a", "b"))
    for split in ("train", "val"):
        shutil.rmtree(tmp_path / "images" / split / "b")
    message = user_error(capsys, "train", recipe, "--run-dir", tmp_path / "run",
                         fragments=("holds one class folder (a/); a classifier needs at least two",))
    assert "out_features" not in message

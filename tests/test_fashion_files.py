"""FashionMNIST read in place, plain or gzipped: read-only folders work, damaged archives are one
message, nothing is written beside the user's files."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from conftest import RECIPES, write_fashion_mnist
from reliability_helpers import read_only, snapshot, train_ok, user_error


def _gzip_all(root: Path) -> Path:
    raw = root / "FashionMNIST" / "raw"
    for path in raw.iterdir():
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    return raw


FASHION = ["trainer.epochs=1", "logging.wandb=false", "optimizer.lr=0.2"]


def test_gzipped_fashion_mnist_in_a_read_only_folder(capsys, tmp_path):
    root = tmp_path / "data"
    write_fashion_mnist(root)
    raw = _gzip_all(root)
    before = snapshot(root)
    with read_only(root):
        train_ok(capsys, RECIPES / "fashion_mnist_mlp.yaml", f"data.root={root}", *FASHION,
                 "--run-dir", tmp_path / "run")
    assert snapshot(root) == before  # nothing unpacked or left beside the files
    assert sorted(p.name for p in raw.iterdir()) == sorted(p.name for p in raw.glob("*.gz"))


@pytest.mark.parametrize("damage", ["truncated", "not_gzip"])
def test_damaged_fashion_mnist_archives_are_one_message(capsys, tmp_path, damage):
    root = tmp_path / "data"
    write_fashion_mnist(root)
    raw = _gzip_all(root)
    archive = raw / "train-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:2000] if damage == "truncated" else b"<html>not found</html>" * 50)
    before = snapshot(root)
    user_error(capsys, "train", RECIPES / "fashion_mnist_mlp.yaml", f"data.root={root}", *FASHION,
               "--run-dir", tmp_path / "run", fragments=(str(archive), "replace"))
    assert snapshot(root) == before  # no .tmp left in the user's folder
    assert not (tmp_path / "run").exists()

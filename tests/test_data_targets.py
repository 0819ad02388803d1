"""Targets are checked against the task at start-up, for every data kind, naming the file (or sample) and
the offending value (issue 26, item 4): binary targets are 0 or 1, class indices lie in 0..classes-1,
regression targets are finite, a sequence's token ids lie in the vocabulary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
import yaml

from reliability_helpers import user_error
from trainwright.data.bundle import Task
from trainwright.data.targets import check_targets


def npy_recipe(folder: Path, targets: np.ndarray, task: str, **data: object) -> Path:
    """A recipe over 40 rows of 4 features with `targets` (one per row) for `task`."""
    np.save(folder / "x.npy", np.random.default_rng(0).normal(size=(len(targets), 4)).astype(np.float32))
    np.save(folder / "y.npy", targets)
    outputs, loss = {"binary": (1, "bce_with_logits"), "multiclass": (3, "cross_entropy"),
                     "regression": (1, "mse")}[task]
    recipe = {
        "name": "targets",
        "data": {"name": "npy", "inputs": str(folder / "x.npy"), "targets": str(folder / "y.npy"), "task": task,
                 "batch_size": 8, **data},
        "model": {"name": "mlp", "in_features": 4, "hidden": [8], "out_features": outputs},
        "loss": {"name": loss}, "optimizer": {"name": "sgd", "lr": 0.1},
        "trainer": {"max_steps": 2}, "logging": {"wandb": False},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return folder / "recipe.yaml"


def with_value(dtype: type, good: int, bad: float, row: int, count: int = 40) -> np.ndarray:
    values = np.full(count, good, dtype=dtype)
    values[row] = bad
    return values


CASES = {
    "binary 0/7": (with_value(np.float32, 0, 7, 5), "binary", {},
                   "y.npy, row 5: the target 7 does not fit task 'binary': a binary task's targets are 0 or 1"),
    "binary -1/0": (with_value(np.int64, 0, -1, 0), "binary", {},
                    "y.npy, row 0: the target -1 does not fit task 'binary'"),
    "multiclass below 0": (with_value(np.int64, 1, -1, 12), "multiclass", {},
                           "y.npy, row 12: the target -1 does not fit task 'multiclass': class indices start at 0"),
    "multiclass beyond the names": (with_value(np.int64, 2, 3, 7), "multiclass", {"class_names": ["a", "b", "c"]},
                                    "y.npy, row 7: the target 3 does not fit task 'multiclass': class indices run "
                                    "from 0 to 2 (the data set names 3 classes)"),
    "regression nan": (with_value(np.float32, 1, np.nan, 38), "regression", {},
                       "y.npy, row 38: the target nan does not fit task 'regression': regression targets must "
                       "be finite"),
}


@pytest.mark.parametrize("case", CASES)
def test_npy_targets_outside_the_task_are_refused_at_start_up(capsys, tmp_path, case):
    targets, task, data, fragment = CASES[case]
    recipe = npy_recipe(tmp_path, targets, task, **data)
    user_error(capsys, "train", recipe, "--run-dir", tmp_path / "run", fragments=(str(tmp_path), fragment))
    assert not (tmp_path / "run").exists()


def test_a_validation_file_names_its_own_rows(capsys, tmp_path):
    recipe = npy_recipe(tmp_path, np.zeros(40, dtype=np.float32), "binary")
    np.save(tmp_path / "vy.npy", with_value(np.float32, 1, 2, 3, count=10))
    np.save(tmp_path / "vx.npy", np.zeros((10, 4), dtype=np.float32))
    user_error(capsys, "train", recipe, f"data.val_inputs={tmp_path / 'vx.npy'}",
               f"data.val_targets={tmp_path / 'vy.npy'}", "--run-dir", tmp_path / "run",
               fragments=("vy.npy, row 3: the target 2 does not fit task 'binary'",))


def test_a_shard_sample_with_a_class_beyond_the_names_is_named(capsys, tmp_path):
    for split, bad in (("train", 5), ("val", None)):
        with wds.TarWriter(str(tmp_path / f"{split}-00.tar")) as writer:
            for number in range(16):
                label = bad if number == 2 and bad is not None else number % 3
                writer.write({"__key__": f"{number:06d}", "npy": np.zeros(4, dtype=np.float32), "cls": label})
    recipe = {
        "name": "shards", "data": {"name": "shards", "root": str(tmp_path), "class_names": ["a", "b", "c"],
                                   "batch_size": 16},
        "model": {"name": "mlp", "in_features": 4, "hidden": [8], "out_features": 3},
        "loss": {"name": "cross_entropy"}, "optimizer": {"name": "sgd", "lr": 0.1},
        "trainer": {"max_steps": 1}, "logging": {"wandb": False},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    user_error(capsys, "train", tmp_path / "recipe.yaml", "--run-dir", tmp_path / "run",
               fragments=("train-00.tar, sample 2 (.cls): the target 5 does not fit task 'multiclass'",
                          "class indices run from 0 to 2"))


def test_sequence_token_ids_outside_the_vocabulary_are_named():
    task = Task("sequence", class_names=("a", "b", "c"))
    check_targets(torch.tensor([[0, 2, -100]]), task, str)  # padding is allowed
    with pytest.raises(Exception, match=r"item 1, column 2: the target 3 does not fit task 'sequence': token ids run "
                                        r"from 0 to 2 \(3 tokens in the vocabulary\), or are -100 \(padding\)"):
        check_targets(torch.tensor([[0, 1, 2], [1, 1, 3]]), task, lambda row: f"item {row}")

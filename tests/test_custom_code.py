"""Your own data set and model, named by import path, end to end through the CLI (README: "Writing your own
components"): a package written to a temporary folder and put on PYTHONPATH, using only the documented
`trainwright.data.bundle` API. The same data is served two ways: as whole tensors (`TensorSplit`) and item by
item (a plain `torch.utils.data.Dataset`, read by `data.num_workers=2` DataLoader workers). Both must train to
the same weights, byte for byte; eval, predict and plot must work on the item-by-item run.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

import processes
from conftest import assert_ok, cli_env, describe, run_cli, workflow

MODELS = '''
    from torch import nn


    class Net(nn.Module):
        """A two-layer classifier; its constructor arguments come from the recipe's model section."""

        def __init__(self, in_features: int, hidden: int = 32, num_classes: int = 2):
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

        def forward(self, x):
            return self.layers(x)
'''

DATA = '''
    import os

    import torch
    from torch.utils.data import Dataset

    from trainwright.data.bundle import DataBundle, Task, TensorSplit


    def _points(num_points, seed):
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, 2, (num_points,), generator=g)
        points = torch.randn(num_points, 2, generator=g) + 3.0 * labels.unsqueeze(1).float()
        return points, labels


    def blobs(num_points: int = 2000, seed: int = 0) -> DataBundle:
        """Two Gaussian blobs in 2-D, labelled 0 and 1; the last 20% is the validation split."""
        points, labels = _points(num_points, seed)
        n_train = int(num_points * 0.8)
        return DataBundle(
            train=TensorSplit(points[:n_train], labels[:n_train]),
            val=TensorSplit(points[n_train:], labels[n_train:]),
            task=Task("multiclass", class_names=("a", "b")),
            describe_input=lambda i: f"({points[n_train + i, 0]:.2f}, {points[n_train + i, 1]:.2f})",
        )


    _reported_pid = None


    class Items(Dataset):
        """The same points served one at a time; each process that reads an item leaves a file named by its
        pid in $SERVED_BY."""

        def __init__(self, points, labels):
            self.points, self.labels = points, labels

        def __len__(self):
            return len(self.points)

        def __getitem__(self, index):
            global _reported_pid
            if _reported_pid != os.getpid():
                _reported_pid = os.getpid()
                open(os.path.join(os.environ["SERVED_BY"], str(_reported_pid)), "w").close()
            return self.points[index], self.labels[index]


    def blob_items(num_points: int = 2000, seed: int = 0) -> DataBundle:
        points, labels = _points(num_points, seed)
        n_train = int(num_points * 0.8)
        return DataBundle(
            train=Items(points[:n_train], labels[:n_train]),
            val=Items(points[n_train:], labels[n_train:]),
            task=Task("multiclass", class_names=("a", "b")),
            describe_input=lambda i: f"({points[n_train + i, 0]:.2f}, {points[n_train + i, 1]:.2f})",
        )
'''


def recipe(data: str, **extra) -> dict:
    return {
        "name": "blobs",
        "data": {"name": data, "num_points": 2000, "batch_size": 32, **extra},
        "model": {"name": "my_pkg.models:Net", "in_features": 2, "hidden": 16},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "adam", "lr": 0.01},
        "trainer": {"epochs": 2},
        "logging": {"wandb": False},
    }


@workflow
def custom(folder: Path) -> dict:
    """Write my_pkg, train it both ways at once, then eval, predict and plot the item-by-item run."""
    package = folder / "code" / "my_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(textwrap.dedent(MODELS))
    (package / "data.py").write_text(textwrap.dedent(DATA))
    served_by = folder / "served_by"
    served_by.mkdir()
    env = cli_env(PYTHONPATH=str(folder / "code"), SERVED_BY=str(served_by))
    runs = {"tensors": recipe("my_pkg.data:blobs"), "items": recipe("my_pkg.data:blob_items", num_workers=2)}
    result: dict = {"served_by": served_by}
    with processes.starter(folder) as start:
        started = {}
        for name, content in runs.items():
            (folder / f"{name}.yaml").write_text(yaml.safe_dump(content))
            result[name] = folder / name
            started[name] = start([sys.executable, "-m", "trainwright", "train", folder / f"{name}.yaml",
                                   "--run-dir", folder / name], env, name=name)
        for name, process in started.items():
            result[f"{name}_code"], result[f"{name}_output"] = process.finish(), process.output()
    if result["items_code"] == 0:
        result["eval"] = run_cli("eval", folder / "items", env=env)
        result["predict"] = run_cli("predict", folder / "items", "-n", "5", env=env)
        result["plot_started_ns"] = time.time_ns()
        result["plot"] = run_cli("plot", folder / "items", env=env)
        result["without_path"] = run_cli("eval", folder / "items")  # PYTHONPATH is needed for eval too
    return result


def test_custom_data_and_model_by_import_path_train(custom):
    for name in ("tensors", "items"):
        assert custom[f"{name}_code"] == 0, custom[f"{name}_output"]
        assert "Traceback" not in custom[f"{name}_output"]
        assert re.search(r"^Run complete at step 100: val/loss=\d\.\d{4}, val/accuracy=\d\.\d{4}$",
                         custom[f"{name}_output"], re.M), custom[f"{name}_output"]  # 1600 / 32 = 50 steps per epoch
        summary = json.loads((custom[name] / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["val/accuracy"] >= 0.9


def test_items_served_one_by_one_with_workers_train_exactly_like_tensors(custom):
    assert custom["items_code"] == 0, custom["items_output"]
    assert (custom["items"] / "model.safetensors").read_bytes() == (
        custom["tensors"] / "model.safetensors"
    ).read_bytes()
    # the items were read by DataLoader worker processes (2 per epoch), not only by the trainer itself
    pids = {int(p.name) for p in custom["served_by"].iterdir()}
    assert len(pids) >= 3, pids


def test_eval_predict_plot_import_the_same_code(custom):
    assert custom["items_code"] == 0, custom["items_output"]
    metrics = json.loads(assert_ok(custom["eval"]).stdout)
    summary = json.loads((custom["items"] / "summary.json").read_text())
    assert set(metrics) == {"val/loss", "val/accuracy"}
    assert metrics["val/accuracy"] == pytest.approx(summary["val/accuracy"])

    lines = assert_ok(custom["predict"]).stdout.splitlines()
    assert len(lines) == 5, describe(custom["predict"])
    for line in lines:
        assert re.fullmatch(r'\(-?\d+\.\d\d, -?\d+\.\d\d\) Predicted: "[ab]", Actual: "[ab]"', line), line

    result = assert_ok(custom["plot"])
    assert result.stdout.split() == [str(custom["items"] / "plots" / name)
                                     for name in ("loss_curves.png", "confusion_matrix.png")]

    missing = custom["without_path"]
    assert missing.returncode == 2 and "my_pkg" in missing.stderr and "PYTHONPATH" in missing.stderr, describe(missing)
    assert "Traceback" not in missing.stderr

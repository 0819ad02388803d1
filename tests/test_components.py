"""Component builders in process: data sets, registry checks."""

from __future__ import annotations

import gzip

import pytest
import torch

from conftest import FASHION_TRAIN_SIZE, RECIPES, write_fashion_mnist
from trainwright.components import SCHEDULERS
from trainwright.data.loading import batches_per_epoch, epoch_order, train_indices
from trainwright.data.vision import fashion_mnist
from trainwright.errors import UserError


def test_fashion_mnist_reads_gzipped_idx_files(tmp_path):
    test_labels = write_fashion_mnist(tmp_path)
    for path in (tmp_path / "FashionMNIST" / "raw").iterdir():
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    bundle = fashion_mnist(root=str(tmp_path))
    assert bundle.train.inputs.shape == (FASHION_TRAIN_SIZE, 1, 28, 28)
    assert bundle.val.inputs.dtype == torch.float32 and float(bundle.val.inputs.max()) <= 1.0
    assert bundle.val.targets.tolist() == test_labels.tolist()


def only_optimizer(optimizer):
    """A scheduler builder that does not take total_steps (for the test below)."""


def test_imported_scheduler_must_take_what_trainwright_passes():
    with pytest.raises(UserError, match="must take the argument.*total_steps"):
        SCHEDULERS.check("test_components:only_optimizer", {})
    SCHEDULERS.check("cosine", {"warmup_steps": 2})
    SCHEDULERS.check("torch.optim.lr_scheduler:StepLR", {"step_size": 2})  # a scheduler class: trainwright builds it


def test_batch_order_does_not_depend_on_the_process_count():
    """Global batch b holds the same samples whether 1, 2 or 4 processes share it."""
    samples, batch, seed, epoch = 100, 8, 3, 2
    one = list(train_indices(samples, batch, seed, epoch, 0, rank=0, world_size=1))
    for world in (2, 4):
        shares = [list(train_indices(samples, batch, seed, epoch, 0, rank, world)) for rank in range(world)]
        for b in range(batches_per_epoch(samples, batch)):
            assert torch.equal(torch.cat([share[b] for share in shares]), one[b])
    assert not torch.equal(epoch_order(samples, seed, 0), epoch_order(samples, seed, 1))
    resumed = list(train_indices(samples, batch, seed, epoch, 5, rank=0, world_size=1))
    assert all(torch.equal(a, b) for a, b in zip(resumed, one[5:]))


def test_metrics_from_the_registry_and_from_user_code(tmp_path, monkeypatch):
    """A metric returns per-batch sums; the reported value is the mean over items, named after the function."""
    from trainwright.components import build_scoring
    from trainwright.data.bundle import Task, TensorSplit
    from trainwright.distributed.processes import Processes
    from trainwright.recipe import load_recipe
    from trainwright.training.evaluation import evaluate

    (tmp_path / "user_metrics.py").write_text(
        "def off_by_more_than_one(outputs, targets, task, output_kind):\n"
        "    return ((outputs - targets).abs() > 1).sum()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    inputs = torch.arange(6, dtype=torch.float32).unsqueeze(1)
    targets = inputs.clone()
    targets[:2] += 3  # two items off by 3
    split = TensorSplit(inputs, targets)
    recipe = load_recipe(RECIPES / "linear_regression.yaml", ["metrics=[mae, mse, user_metrics:off_by_more_than_one]"])
    scoring = build_scoring(recipe, Task("regression"))
    metrics = evaluate(torch.nn.Identity(), split, scoring, Processes.single(), batch_size=4)
    assert metrics == pytest.approx({"loss": 1.0, "mae": 1.0, "mse": 3.0, "off_by_more_than_one": 2 / 6})


def test_empty_metrics_mean_none_and_absent_metrics_the_defaults(capsys, tmp_path):
    """`metrics: []` (what the README and a start-up message tell a model without logits to set) reports
    only the loss, in training, summary.json and eval; no `metrics` key reports the task's defaults."""
    import json

    from reliability_helpers import HEART, TINY, call, train_ok
    from trainwright.components import metric_names
    from trainwright.data.bundle import Task
    from trainwright.recipe import load_recipe

    train_ok(capsys, HEART, *TINY, "metrics=[]", "--run-dir", tmp_path / "none")
    assert [k for k in json.loads((tmp_path / "none" / "summary.json").read_text()) if k.startswith("val/")] == [
        "val/loss"
    ]
    code, out, err = call(capsys, "eval", tmp_path / "none")
    assert code == 0, err
    assert list(json.loads(out)) == ["val/loss"]  # heart has no test split: eval scores validation
    recipe = load_recipe(HEART)
    assert recipe.metrics is None and metric_names(recipe, Task("binary")) == ["accuracy"]

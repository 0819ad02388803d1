"""Streamed tar shards (issue 21, larger than memory): 6 webdataset shards of 9-16 samples (72 in all: 4
features as .npy, a class as .cls), batches of 8 (9 steps per epoch), 4 epochs, on 2 processes with 2
DataLoader workers each.

  * killed mid-epoch (SIGKILL to the whole process tree) and run again: the final weights and every step's
    samples are bitwise those of an uninterrupted run;
  * each sample appears once per epoch; a 2-process run stopped mid-epoch and resumed on 1 process trains
    on the same samples at every step;
  * a process's items do not depend on the process count or the number of workers, and a user's
    IterableDataset that keeps the contract is served the same way; one without it is one message.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
import yaml
from PIL import Image
from torch.utils.data import IterableDataset

import resuming
from conftest import REPO, assert_ok, assert_resumed, assert_user_error, cli_env, weights, workflow, write_shards
from reliability_helpers import call
from test_resume import step_samples
from trainwright.data.loading import TrainBatches, iterate
from trainwright.data.shards import shards

CPU_2PROC = REPO / "accelerate_configs" / "cpu_2proc.yaml"
SHARD_SIZES, STEPS_PER_EPOCH, EPOCHS = (10, 14, 9, 12, 11, 16), 9, 4
KILL_STEP = 13  # mid-epoch: the killed run is SIGKILLed right after its step-13 checkpoint
RESUMING = re.compile(r"^Resuming from step (\d+) \(epoch (\d+), batch (\d+)\)", re.M)

pytestmark = pytest.mark.slow


def write_recipe(folder: Path, root: Path) -> Path:
    recipe = {
        "name": "shards", "seed": 0,
        "data": {"name": "shards", "root": str(root), "class_names": ["a", "b", "c"], "batch_size": 8,
                 "num_workers": 2},
        "model": {"name": "mlp", "in_features": 4, "hidden": [16], "out_features": 3},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "trainer": {"epochs": EPOCHS, "record_samples": True, "log_every_steps": 3},
        "checkpoint": {"every_steps": 1, "every_epochs": None, "keep_last": 50},
        "logging": {"wandb": False},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@workflow
def stream_runs(folder: Path) -> dict:
    root = write_shards(folder / "shards", SHARD_SIZES)
    recipe, env, runs = write_recipe(folder, root), cli_env(TRAINWRIGHT_CACHE=str(folder / "cache")), {"folder": folder}
    # The uninterrupted run saves only its final checkpoint: how often a run saves changes none of its weights.
    runs["reference"] = resuming.train(recipe, folder / "reference", "checkpoint.every_steps=null", config=CPU_2PROC,
                                       env=env)
    killed = resuming.kill_at(KILL_STEP, ["train", recipe, "--run-dir", folder / "killed"], folder / "killed",
                              resuming.launcher(CPU_2PROC), env)
    runs["killed_output"] = killed.stdout + killed.stderr
    runs["resumed"] = resuming.train(recipe, folder / "killed", config=CPU_2PROC, env=env)
    runs["two"] = resuming.train(recipe, folder / "elastic", "trainer.max_steps=13", config=CPU_2PROC, env=env)
    runs["one"] = resuming.train(recipe, folder / "elastic", env=env)
    return runs


def test_killed_mid_epoch_on_two_processes_ends_bitwise_equal(stream_runs):
    reference = assert_ok(stream_runs["reference"])
    assert "world_size=2 device=cpu" in reference.stdout
    assert f"Run complete at step {STEPS_PER_EPOCH * EPOCHS}" in reference.stdout
    resumed = assert_ok(stream_runs["resumed"])
    assert_resumed(resumed.stdout + resumed.stderr, KILL_STEP)
    step, _, batch = (int(v) for v in RESUMING.search(resumed.stdout).groups())
    assert step < STEPS_PER_EPOCH * EPOCHS and batch != 0, resumed.stdout  # mid-epoch
    assert "Traceback" not in stream_runs["killed_output"]
    folder = stream_runs["folder"]
    assert weights(folder / "killed") == weights(folder / "reference")
    assert step_samples(folder / "killed") == step_samples(folder / "reference")


def test_each_sample_once_per_epoch_and_two_processes_resumed_on_one(stream_runs):
    two, one = assert_ok(stream_runs["two"]), assert_ok(stream_runs["one"])
    assert "world_size=2 device=cpu" in two.stdout and "world_size=1 device=cpu" in one.stdout
    assert_resumed(one.stdout + one.stderr, 13)
    assert RESUMING.search(one.stdout).groups() == ("13", "2", "4"), one.stdout
    reference = step_samples(stream_runs["folder"] / "reference")
    assert step_samples(stream_runs["folder"] / "elastic") == reference
    orders = []
    for epoch in range(EPOCHS):
        steps = range(epoch * STEPS_PER_EPOCH + 1, (epoch + 1) * STEPS_PER_EPOCH + 1)
        seen = [i for s in steps for i in reference[s]]
        assert sorted(seen) == list(range(sum(SHARD_SIZES))), epoch  # 72 samples, each once
        orders.append(seen)
    assert len({tuple(order) for order in orders}) == EPOCHS  # a new shard order every epoch


def served(dataset, world_size: int, workers: int, start: int = 0, epoch: int = 1) -> torch.Tensor:
    """The inputs of the global batches start, start+1, ... of `epoch`, put together from every process."""
    per_process = []
    for rank in range(world_size):
        batches = TrainBatches(dataset, 8, 0, rank, world_size, workers)
        per_process.append([b[0] for b in batches.epoch(epoch, start, batches.indices(epoch, start))])
        batches.close()
    return torch.cat([torch.cat(parts) for parts in zip(*per_process)])


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TRAINWRIGHT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_items_do_not_depend_on_processes_or_workers(tmp_path):
    data = shards(write_shards(tmp_path), class_names=["a", "b", "c"])
    whole = served(data.train, 1, 0)
    assert len(whole) == 72
    assert torch.equal(served(data.train, 2, 2), whole)
    assert torch.equal(served(data.train, 2, 0, start=3), whole[24:])
    stored = next(iterate(data.train, iter([torch.arange(72)])))[0]  # evaluation's order: as stored
    ids = torch.cat(TrainBatches(data.train, 8, 0, 0, 1).indices(1, 0))
    assert torch.equal(stored[ids], whole)  # the recorded sample ids are the samples served


class Counting(IterableDataset):
    """A user's stream that keeps the contract: item k of epoch e's order is e * 1000 + k."""

    def __len__(self) -> int:
        return 40

    def stream(self, epoch: int, positions: Iterator[int], seed: int) -> Iterator[torch.Tensor]:
        for position in positions:
            yield torch.tensor([float(epoch * 1000 + position)]), 0

    def __iter__(self):
        return self.stream(0, iter(range(40)), 0)


def test_a_users_stream_with_the_contract_is_served_in_order():
    assert served(Counting(), 2, 2, start=1).flatten().tolist() == [1000.0 + k for k in range(8, 40)]


def test_a_users_iterable_dataset_without_the_contract_is_one_message(tmp_path):
    (tmp_path / "mystream.py").write_text(
        "import torch\nfrom torch.utils.data import IterableDataset\n"
        "from trainwright.data.bundle import DataBundle, Task\n"
        "class Plain(IterableDataset):\n"
        "    def __iter__(self):\n        return iter([(torch.zeros(4), 0)] * 16)\n"
        "    def __len__(self):\n        return 16\n"
        "def build():\n    return DataBundle(train=Plain(), val=Plain(), task=Task('multiclass', ('a', 'b')))\n"
    )
    recipe = write_recipe(tmp_path, tmp_path)
    text = recipe.read_text().replace("name: shards\n", "name: mystream:build\n", 1)
    data = yaml.safe_load(text)
    data["data"] = {"name": "mystream:build", "batch_size": 8}
    data["model"]["out_features"] = 2
    recipe.write_text(yaml.safe_dump(data))
    env = cli_env(PYTHONPATH=f"{tmp_path}:{REPO / 'src'}")
    result = resuming.train(recipe, tmp_path / "run", env=env)
    message = assert_user_error(result.returncode, result.stderr, "IterableDataset without stream",
                                "stream(epoch, positions, seed)", "Writing your own components")
    assert "train split" in message
    assert not (tmp_path / "run").exists()


def test_augmented_images_do_not_depend_on_processes_or_workers(tmp_path):
    """PNG samples through a random crop and flip: each item's generators are seeded from its position."""
    rng = np.random.default_rng(1)
    for name, count in (("train", 24), ("val", 4)):
        with wds.TarWriter(str(tmp_path / f"{name}-00.tar")) as writer:
            for i in range(count):
                picture = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(picture, format="PNG")
                writer.write({"__key__": f"{name}{i:04d}", "png": picture.getvalue(), "cls": i % 2})
    steps = [{"name": "RandomResizedCrop", "size": 8, "scale": [0.5, 1.0], "antialias": True},
             {"name": "RandomHorizontalFlip"}, {"name": "ToDtype", "dtype": "float32", "scale": True}]
    data = shards(tmp_path, inputs="png", class_names=["a", "b"], train_transforms=steps)
    whole = served(data.train, 1, 0)
    assert whole.shape == (24, 3, 8, 8)
    assert torch.equal(served(data.train, 2, 2), whole)
    assert torch.equal(served(data.train, 2, 0, start=1), whole[8:])
    assert not torch.equal(whole, served(data.train, 1, 0, epoch=2)[: len(whole)])


def test_eval_reads_the_val_shards_and_a_changed_shard_is_refused(stream_runs, capsys, monkeypatch):
    """eval and predict in this process (a CLI start-up is most of their time), on the cache of the runs."""
    run = stream_runs["folder"] / "reference"
    monkeypatch.setenv("TRAINWRIGHT_CACHE", str(stream_runs["folder"] / "cache"))
    code, out, err = call(capsys, "eval", run)
    assert code == 0 and "accuracy" in out, out + err
    rows = stream_runs["folder"] / "rows.npy"
    np.save(rows, np.array([[2, 2, 0, 0], [-2, -2, 0, 0]], dtype=np.float32))
    code, out, err = call(capsys, "predict", run, "--input", rows)
    assert code == 0 and re.findall(r'^([01]) Predicted: "[abc]"', out, re.M) == ["0", "1"], out + err
    shard = stream_runs["folder"] / "shards" / "train-03.tar"
    status = shard.stat()
    try:
        os.utime(shard, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
        code, _, err = call(capsys, "eval", run)
        assert_user_error(code, err, "train split", "--allow-data-change")
    finally:
        os.utime(shard, ns=(status.st_atime_ns, status.st_mtime_ns))


def test_the_index_of_a_shard_is_read_from_its_headers_once(tmp_path, cache, monkeypatch):
    root = write_shards(tmp_path / "shards")
    first = shards(root, class_names=["a", "b", "c"])
    assert len(list(cache.glob("shard-index/*.json"))) == len(SHARD_SIZES) + 1

    def no_tar(*args, **kwargs):
        raise AssertionError("a shard's headers were read again")

    monkeypatch.setattr("tarfile.open", no_tar)
    again = shards(root, class_names=["a", "b", "c"])
    assert again.train.index == first.train.index
    assert torch.equal(served(again.train, 1, 0), served(first.train, 1, 0))
    changed = root / "train-02.tar"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="read again"):
        shards(root, class_names=["a", "b", "c"])

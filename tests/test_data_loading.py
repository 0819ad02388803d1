"""Serving data (issue 21), in process: items computed from (seed, epoch, index) alone whatever the workers
and the position; one loader per run; num_workers auto; Path arguments; transform pipelines checked; the
fingerprint reads no item and hashes a file once; memory-mapped .npy arrays."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from trainwright.data import fingerprint
from trainwright.data.arrays import npy
from trainwright.data.bundle import DataBundle, Task, TensorSplit
from trainwright.data.loading import TrainBatches, iterate, resolve_workers, train_indices
from trainwright.data.paths import path_arguments
from trainwright.data.transforms import build_pipeline
from trainwright.errors import UserError
from trainwright.recipe import validate
from trainwright.registry import DATASETS


class Noisy(Dataset):
    """Each item is the index and one draw from each of torch's, Python's and NumPy's global generators."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([torch.rand(()).item(), random.random(), np.random.rand()]), index


def batches(workers: int, epoch: int, start: int, world_size: int = 1, rank: int = 0) -> list[list]:
    feed = TrainBatches(Noisy(), 8, seed=3, rank=rank, world_size=world_size, num_workers=workers)
    try:
        return [[inputs, targets] for inputs, targets in feed.epoch(epoch, start, feed.indices(epoch, start))]
    finally:
        feed.close()


def test_items_depend_on_seed_epoch_and_index_only():
    whole = batches(0, epoch=1, start=0)
    assert [b[1].tolist() for b in whole] == [i.tolist() for i in train_indices(40, 8, 3, 1, 0, 0, 1)]
    with_workers = batches(2, epoch=1, start=0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole, with_workers))
    resumed = batches(2, epoch=1, start=2)  # a resume at batch 2 with workers gives the same items
    assert all(torch.equal(a[0], b[0]) for a, b in zip(whole[2:], resumed)) and len(resumed) == 3
    halves = [batches(0, epoch=1, start=0, world_size=2, rank=r) for r in (0, 1)]
    by_index = {i: row for b in whole for row, i in zip(b[0], b[1].tolist())}
    for half in halves:  # on 2 processes each item is what it is on 1
        assert all(torch.equal(row, by_index[i]) for b in half for row, i in zip(b[0], b[1].tolist()))
    other_epoch = {i: row for b in batches(0, epoch=2, start=0) for row, i in zip(b[0], b[1].tolist())}
    assert not any(torch.equal(by_index[i], other_epoch[i]) for i in by_index if i in other_epoch)


def test_serving_in_the_main_process_leaves_its_generators_alone():
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    list(iterate(Noisy(), iter([torch.arange(10)])))
    batches(0, epoch=0, start=0)
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


def test_num_workers_auto_and_prefetch_factor(monkeypatch):
    base = {"name": "r", "model": {"name": "mlp"}, "loss": {"name": "mse"}, "optimizer": {"name": "sgd", "lr": 0.1}}
    recipe = validate(
        {**base, "data": {"name": "heart", "batch_size": 8, "num_workers": "auto", "prefetch_factor": 4}}, "r"
    )
    assert recipe.data.num_workers == "auto" and recipe.data.prefetch_factor == 4 and recipe.data.kwargs() == {}
    for bad in (-1, "many", 2.0):
        with pytest.raises(UserError, match="num_workers"):
            validate({**base, "data": {"name": "heart", "batch_size": 8, "num_workers": bad}}, "r")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert 0 <= resolve_workers("auto") <= 8 and resolve_workers(3) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4096")  # more processes than cores: none to spare
    assert resolve_workers("auto") == 0


def folders(root: Path, image_root: Path | None = None, count: int = 2) -> DataBundle:
    assert isinstance(root, Path) and (image_root is None or isinstance(image_root, Path))
    split = TensorSplit(torch.zeros(count, 1), torch.zeros(count))
    return DataBundle(train=split, val=split, task=Task("regression"))


def test_path_annotated_arguments_arrive_as_paths():
    name = f"{__name__}:folders"  # a user's builder by import path; `folders` asserts what it gets
    bundle = DATASETS.build(name, {"root": "a/b", "image_root": "c", "count": 3})
    assert len(bundle.train) == 3
    assert path_arguments(name) == ["root", "image_root"]


def test_transform_pipelines_are_checked_by_name_and_argument():
    pipeline = build_pipeline([{"name": "RandomHorizontalFlip", "p": 1.0}, {"name": "ToDtype", "dtype": "float32",
                                                                          "scale": True}], "data.train_transforms")
    image = torch.arange(6, dtype=torch.uint8).reshape(1, 2, 3)
    assert torch.allclose(pipeline(image), image.flip(-1).float() / 255)
    cases = [
        ([{"name": "RandomHorizontalFlop"}], "data.train_transforms[0].name", "did you mean 'RandomHorizontalFlip'"),
        ([{"name": "RandomCrop", "size": 4}, {"name": "Resize", "sizes": 4}], "data.train_transforms[1].sizes",
         "did you mean 'size'"),
        ([{"name": "ToDtype", "dtype": "float33"}], "data.train_transforms[0].dtype", "not a torch dtype"),
        (["RandomCrop"], "data.train_transforms[0]", "expected a mapping"),
    ]
    for steps, where, hint in cases:
        with pytest.raises(UserError, match=r"\S*") as error:
            build_pipeline(steps, "data.train_transforms")
        assert str(error.value).startswith(where) and hint in str(error.value), str(error.value)


def test_check_validates_the_pipelines_of_an_image_folder_recipe(tmp_path):
    from trainwright.components import check_recipe
    from trainwright.recipe import load_recipe

    recipe = Path(__file__).resolve().parent.parent / "recipes" / "resnet_folder.yaml"
    check_recipe(load_recipe(recipe))
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace("RandomHorizontalFlip", "RandomHorizontalFlips"))
    with pytest.raises(UserError, match=r"data.train_transforms\[1\].name: .* did you mean 'RandomHorizontalFlip'"):
        check_recipe(load_recipe(bad))


class Declared(Dataset):
    def __init__(self, version: int) -> None:
        self.version = version

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        raise AssertionError("the fingerprint must not read items")

    def fingerprint(self) -> dict:
        return {"version": self.version}


class Undeclared(Declared):
    fingerprint = None  # type: ignore[assignment]


def test_fingerprint_reads_no_item_and_hashes_each_file_once(tmp_path, monkeypatch):
    source = tmp_path / "data.csv"
    source.write_text("x\n1\n")
    bundle = DataBundle(train=Declared(1), val=Undeclared(1), task=Task("regression"), sources={"data": source})
    hashed = []
    monkeypatch.setattr(fingerprint, "sha256", lambda path: hashed.append(path) or "h" * 64)
    first = fingerprint.data_record(bundle)
    assert first["splits"]["train"] == {"items": 4, "declared": {"version": 1}}
    assert first["splits"]["val"] == {"items": 4, "type": f"{__name__}.Undeclared"}
    second = fingerprint.data_record(bundle, first)
    assert len(hashed) == 1 and fingerprint.differences(first, second) == []
    source.write_text("x\n2\n3\n")  # changed: hashed again and refused
    third = fingerprint.data_record(bundle, first)
    assert len(hashed) == 2 and "data: the run trained on" in fingerprint.differences(first, third)[0]
    bundle.train = Declared(2)
    with pytest.raises(UserError, match="train split: 4 items .* version differ"):
        fingerprint.check_same_data(first, fingerprint.data_record(bundle, first), tmp_path, allow_change=False)


def test_npy_arrays_are_memory_mapped_and_fingerprinted_by_samples(tmp_path):
    inputs = np.random.default_rng(0).standard_normal((1000, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", inputs)
    np.save(tmp_path / "y.npy", np.arange(1000, dtype=np.int32) % 3)
    bundle = npy(tmp_path / "x.npy", tmp_path / "y.npy", val_fraction=0.2)
    assert (len(bundle.train), len(bundle.val)) == (800, 200) and bundle.task.class_names == ("0", "1", "2")
    assert bundle.train.targets.dtype == torch.int64 and torch.equal(bundle.val.inputs, torch.from_numpy(inputs[800:]))
    assert isinstance(np.load(tmp_path / "x.npy", mmap_mode="r"), np.memmap)
    before = fingerprint.data_record(bundle)
    inputs[0, 0] += 1  # the first rows are among the sampled bytes
    np.save(tmp_path / "x.npy", inputs)
    after = fingerprint.data_record(npy(tmp_path / "x.npy", tmp_path / "y.npy", val_fraction=0.2))
    assert [line.split(":")[0] for line in fingerprint.differences(before, after)] == ["train split", "val split"]
    with pytest.raises(UserError, match="data.targets: .* does not exist"):
        npy(tmp_path / "x.npy", tmp_path / "missing.npy")


@pytest.mark.parametrize("name", ["npy", "shards"])
def test_row_data_sets_refuse_the_sequence_task(name, tmp_path):
    """npy and shards hold one target per row (a class index or numbers): a sequence task's targets (a class
    per position) would be read as numbers and scored as such, so `task: sequence` is refused at check."""
    from trainwright.components import check_recipe
    from trainwright.recipe import load_recipe

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: rows\ndata: {{name: {name}, inputs: npy, targets: cls, root: ., task: sequence, "
                      "batch_size: 4}\nmodel: {name: mlp, in_features: 2, out_features: 3, hidden: [4]}\n"
                      "loss: {name: cross_entropy}\noptimizer: {name: sgd, lr: 0.1}\n")
    if name == "npy":
        recipe.write_text(
            recipe.read_text().replace("inputs: npy, targets: cls, root: .", "inputs: x.npy, targets: y.npy")
        )
    with pytest.raises(UserError, match=r"^data.task: Input should be 'binary', 'multiclass' or 'regression' "
                                        r"\(got 'sequence'"):
        check_recipe(load_recipe(recipe))


def test_array_image_and_shard_data_sets_do_not_import_pandas():
    """pandas (a third of a second to import) is for tables: the start-up of other data sets goes without it."""
    import subprocess
    import sys

    code = ("import sys, trainwright.components, trainwright.data.arrays, trainwright.data.folders, "
            "trainwright.data.shards, trainwright.finished.inference; print('pandas' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", result.stderr

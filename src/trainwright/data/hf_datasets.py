"""Hugging Face `datasets` folders (written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`; the optional
extra trainwright[finetune], imported only by recipes that read one): the rows of one split, as the
`instructions` data set's items, or (`data.name: hf_dataset`) as feature vectors and targets for any task by a
column mapping: `inputs` (numeric columns, or columns of fixed-length number lists), `target`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainwright.data.arguments import check_val_fraction
from trainwright.data.bundle import DataBundle, RowTaskKind, Task, TensorSplit
from trainwright.data.tasks import KINDS
from trainwright.errors import UserError, did_you_mean

SAVED_MARKS = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a folder written by save_to_disk (a Dataset's, or a DatasetDict's)."""
    return path.is_dir() and any((path / mark).is_file() for mark in SAVED_MARKS)


def load_split(path: Path, split: str | None, key: str = "data.path") -> Any:
    """The `datasets.Dataset` saved at `path`: a DatasetDict's `split` (default 'train'), or a Dataset (then
    `split` must be None or 'train')."""
    path = Path(path).expanduser()
    if not path.is_dir():
        found = "is a file, not a folder" if path.exists() else "does not exist"
        raise UserError(f"{key}: {path} {found} (give a folder written by datasets' save_to_disk)")
    if not is_saved_dataset(path):
        held = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
        raise UserError(f"{key}: {path} is not a folder written by datasets' save_to_disk (it has no "
                        f"{' or '.join(SAVED_MARKS)}; it holds: {held})")
    try:
        import datasets  # type: ignore[import-untyped]
    except ImportError:
        raise UserError(f"{key}: {path} is a Hugging Face datasets folder, and the datasets library is not "
                        "installed: pip install 'trainwright[finetune]'") from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise UserError(f"{key}: datasets cannot read {path} ({exc}); save it again with save_to_disk") from None
    if isinstance(loaded, datasets.DatasetDict):
        chosen = split or "train"
        if chosen not in loaded:
            raise UserError(f"data.split: {path} has no split '{chosen}'{did_you_mean(chosen, list(loaded))} "
                            f"(its splits: {', '.join(loaded)})")
        return loaded[chosen]
    if split not in (None, "train"):
        raise UserError(f"data.split: {path} is a single Dataset, not a DatasetDict with splits; remove data.split")
    return loaded


def check_columns(dataset: Any, wanted: list[tuple[str, str]], path: Path) -> None:
    """Each column `wanted` names ((setting, column) pairs) is one of the dataset's; else one UserError."""
    for setting, column in wanted:
        if column not in dataset.column_names:
            raise UserError(f"{setting}: {path} has no column '{column}'{did_you_mean(column, dataset.column_names)} "
                            f"(its columns: {', '.join(dataset.column_names)})")


def _matrix(dataset: Any, columns: list[str], path: Path) -> np.ndarray:
    """The `columns` as one float32 matrix (rows, features): numbers, or fixed-length lists of numbers."""
    parts = []
    for column in columns:
        try:
            values = np.asarray(dataset[column], dtype=np.float32)
        except (TypeError, ValueError):
            raise UserError(f"data.inputs: column '{column}' of {path} is not numbers (nor lists of numbers of one "
                            f"length): {dataset.features[column]}") from None
        parts.append(values.reshape(len(values), -1))
    return np.concatenate(parts, axis=1)


def _target(dataset: Any, column: str, task: RowTaskKind, names: list[str] | None) -> tuple[torch.Tensor, list[str]]:
    """Class indices (a ClassLabel's, or the index of each value among `names`/the sorted values) or numbers."""
    values = dataset[column]
    if not KINDS[task].class_index_targets:
        try:
            numbers = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError):
            raise UserError(f"data.target: column '{column}' holds {dataset.features[column]}, not numbers, which a "
                            f"{task} task needs (class names are for task: multiclass)") from None
        return torch.tensor(numbers.reshape(len(values), -1)), []
    feature = dataset.features[column]
    if names is None:
        names = list(getattr(feature, "names", None) or sorted({str(v) for v in values}))
    if getattr(feature, "names", None):
        return torch.tensor(values, dtype=torch.long), names
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({str(v) for v in values} - set(index))
    if unknown:
        raise UserError(f"data.target: column '{column}' holds {unknown[:5]}, not in data.class_names {names}")
    return torch.tensor([index[str(v)] for v in values], dtype=torch.long), names


# registered as "hf_dataset" in components.py; its path is pinned (data/paths.py)
def hf_dataset(
    path: Path,
    inputs: list[str],
    target: str,
    task: RowTaskKind = "multiclass",
    class_names: list[str] | None = None,
    split: str | None = None,
    val_split: str | None = None,
    val_fraction: float = 0.2,
) -> DataBundle:
    """Rows of a saved `datasets` folder: the `inputs` columns as a feature vector, `target` as the label
    (multiclass: a ClassLabel column, or values named by `class_names`, default their sorted values) or value
    (binary 0/1, regression). Validation: the `val_split` split, else the last `val_fraction` of the rows."""
    path = Path(path).expanduser()
    train = load_split(path, split)
    wanted = [*(("data.inputs", column) for column in inputs), ("data.target", target)]
    check_columns(train, wanted, path)
    x, (y, names) = _matrix(train, inputs, path), _target(train, target, task, class_names)
    if val_split is not None:
        val = load_split(path, val_split)
        check_columns(val, wanted, path)
        vx, (vy, _) = _matrix(val, inputs, path), _target(val, target, task, names or None)
        splits = TensorSplit(torch.from_numpy(x), y), TensorSplit(torch.from_numpy(vx), vy)
    else:
        check_val_fraction(val_fraction)
        cut = len(x) - max(1, round(len(x) * val_fraction))
        splits = TensorSplit(torch.from_numpy(x[:cut]), y[:cut]), TensorSplit(torch.from_numpy(x[cut:]), y[cut:])
    return DataBundle(train=splits[0], val=splits[1], task=Task(task, tuple(names)), sources=dataset_files(path))


def dataset_files(path: Path) -> dict[str, Path]:
    """The saved folder's files (what data.json fingerprints), by their path in it."""
    return {f"dataset/{p.relative_to(path)}": p for p in sorted(path.rglob("*")) if p.is_file()}

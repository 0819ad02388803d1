"""Arrays larger than memory: `data.name: npy` reads inputs and targets from .npy files memory-mapped
(np.load(mmap_mode='c')): nothing is read at start-up, and each step reads only the rows of its batch,
by whole-tensor indexing (no per-item calls), the same fast path as data held in memory.

The validation split is the last `val_fraction` of the rows (a view, not a copy) unless `val_inputs` and
`val_targets` name files of their own. Each split fingerprints itself by its files' shape, dtype, size,
mtime and a hash of 64 evenly spaced 64 KiB samples of their bytes (data/fingerprint.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainwright.data.arguments import check_val_fraction
from trainwright.data.bundle import DataBundle, RowTaskKind, Task, TensorSplit
from trainwright.data.fingerprint import sampled_file_fingerprint
from trainwright.data.input_batch import InputBatch
from trainwright.data.tasks import KINDS
from trainwright.distributed.processes import launch_rank
from trainwright.errors import UserError

_MAGIC = b"\x93NUMPY"  # how every .npy file begins


class ArraySplit(TensorSplit):
    """Rows `start:stop` of memory-mapped arrays, served as tensors that share the mapping."""

    def __init__(self, files: tuple[Path, Path], inputs: np.ndarray, targets: np.ndarray, rows: slice) -> None:
        super().__init__(torch.from_numpy(inputs[rows]), torch.from_numpy(targets[rows]))
        self.files, self.rows = files, (rows.start or 0, rows.stop if rows.stop is not None else len(inputs))

    def describe_target(self, row: int) -> str:
        """Where target `row` of the split is stored (for messages)."""
        return f"{self.files[1]}, row {self.rows[0] + row}"

    def fingerprint(self) -> dict[str, Any]:
        return {"rows": list(self.rows), "inputs": sampled_file_fingerprint(self.files[0]),
                "targets": sampled_file_fingerprint(self.files[1])}


def _open(path: Path, key: str) -> np.ndarray:
    """The rows of a .npy file, memory-mapped: numbers (booleans, integers or floats), at least 1-d."""
    try:
        with open(path, "rb") as file:
            head = file.read(len(_MAGIC))
    except FileNotFoundError:
        raise UserError(f"{key}: {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"{key}: cannot read {path} ({exc.strerror or exc})") from None
    if head != _MAGIC:  # numpy would try it as a pickle and suggest allow_pickle
        raise UserError(f"{key}: {path} is not a .npy file (it does not begin with NumPy's header); save the array "
                        "with numpy.save")
    try:
        rows = np.load(path, mmap_mode="c")  # copy-on-write: the file is never written
    except (OSError, ValueError) as exc:
        raise UserError(f"{key}: {path} is not a .npy array file that can be memory-mapped ({exc})") from None
    if rows.ndim == 0:
        raise UserError(f"{key}: {path} holds a single value (a 0-d array), not rows; save one row per sample, "
                        "shape (N, ...)")
    if rows.dtype.kind not in "biuf":
        raise UserError(f"{key}: {path} holds {rows.dtype} values, not numbers; save booleans, integers or floats")
    return rows


def _as_float32(rows: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Inputs of another float dtype (float64, float16) cast to float32, the models' dtype: read into memory
    (said once, with how to keep the file memory-mapped); integer inputs (token ids) are kept as stored."""
    if rows.dtype.kind != "f" or rows.dtype == np.float32:
        return rows
    if launch_rank() == 0:
        size = rows.size * 4 / 2**20
        print(f"trainwright: {key}: {path} holds {rows.dtype}; read into memory as float32 ({size:.3g} MiB); save it "
              "as float32 to keep it memory-mapped", file=sys.stderr, flush=True)
    return rows.astype(np.float32)


def _targets(targets: np.ndarray, kind: RowTaskKind, key: str) -> np.ndarray:
    """Class indices as int64 (read into memory when stored otherwise); regression and binary targets as
    float32 columns (N, k)."""
    if KINDS[kind].class_index_targets:
        if targets.ndim != 1 or not np.issubdtype(targets.dtype, np.integer):
            raise UserError(f"{key}: multiclass targets must be one integer class index per row, got {targets.dtype} "
                            f"of shape {targets.shape}")
        return targets if targets.dtype == np.int64 else targets.astype(np.int64)
    columns = targets.reshape(len(targets), -1)
    return columns if columns.dtype == np.float32 else columns.astype(np.float32)


# registered as "npy" in components.py; its paths are pinned (data/paths.py)
def npy(
    inputs: Path,
    targets: Path,
    task: RowTaskKind = "multiclass",
    class_names: list[str] | None = None,
    val_fraction: float = 0.1,
    val_inputs: Path | None = None,
    val_targets: Path | None = None,
) -> DataBundle:
    """Rows of `inputs` (N, ...) with `targets` (N,) or (N, k) from .npy files; `task`: multiclass (integer
    class indices; `class_names` defaults to '0', '1', ...), binary (0/1) or regression."""
    x = _as_float32(_open(Path(inputs), "data.inputs"), inputs, "data.inputs")
    y = _open(Path(targets), "data.targets")
    if len(x) != len(y):
        raise UserError(f"data.inputs holds {len(x)} rows and data.targets {len(y)}; give one target per row")
    y = _targets(y, task, "data.targets")
    files = (Path(inputs), Path(targets))
    if (val_inputs is None) != (val_targets is None):
        raise UserError("data.val_inputs and data.val_targets go together: give both, or neither (then "
                        "data.val_fraction of the rows validate)")
    if val_inputs is not None and val_targets is not None:
        vx = _as_float32(_open(Path(val_inputs), "data.val_inputs"), val_inputs, "data.val_inputs")
        vy = _open(Path(val_targets), "data.val_targets")
        train = ArraySplit(files, x, y, slice(None))
        val = ArraySplit((Path(val_inputs), Path(val_targets)), vx, _targets(vy, task, "data.val_targets"), slice(None))
    else:
        check_val_fraction(val_fraction)
        cut = len(x) - max(1, round(len(x) * val_fraction))
        train, val = ArraySplit(files, x, y, slice(0, cut)), ArraySplit(files, x, y, slice(cut, None))
    names = class_names
    if KINDS[task].class_index_targets and names is None:
        names = [str(i) for i in range(int(y.max()) + 1)]
    return DataBundle(train=train, val=val, task=Task(task, tuple(names or ())))


def array_rows(source: Path, record: dict[str, Any], batch_size: int) -> Iterator[InputBatch]:
    """New inputs for an npy run: a .npy file of rows shaped as the training inputs, `batch_size` at a time."""
    rows = _open(source, "--input")
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        inputs = torch.from_numpy(chunk.astype(np.float32) if chunk.dtype.kind == "f" else np.ascontiguousarray(chunk))
        ids = [str(start + i) for i in range(len(inputs))]
        yield InputBatch(ids, inputs, ids.__getitem__)

"""Tar shards, streamed: `data.name: shards` over `<root>/<train glob>` and `<root>/<val glob>`, tar files
in webdataset's layout (each sample is the run of consecutive members sharing a key, `key.ext`:
`000123.npy` + `000123.cls`, or `000123.png` + `000123.cls`).

An epoch's order is a function of (seed, epoch) alone: the shards in an order drawn from (seed, epoch),
each shard's samples as stored. The global stream is cut into global batches and each process reads its
slice of each (data/loading.py), so where a sample lands does not depend on the process count, and a
run resumes at its exact sample. Each process reads only its own samples: the shards' headers are read
once (no sample data) into an index of where each sample's members lie, kept in the cache folder
($TRAINWRIGHT_CACHE, as the text data set's tokens) under the shard's path, size and mtime, so a process
(or a DataLoader worker) seeks from one of its samples to the next, forward through each shard.

The split fingerprints itself by its shards: name, size, mtime and number of samples (nothing is hashed)."""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import torch
from torch.utils.data import IterableDataset

from trainwright.data.bundle import DataBundle, RowTaskKind, Task
from trainwright.data.folders import DEFAULT_PIPELINE, IMAGE_SUFFIXES, ImageMode
from trainwright.data.loading import EVAL_EPOCH, epoch_order
from trainwright.data.targets import check_targets
from trainwright.data.tasks import KINDS, kind_of
from trainwright.data.transforms import build_pipeline
from trainwright.errors import UserError
from trainwright.run.files import write_text_atomic

Sample = dict[str, list[int]]  # extension -> [offset of its bytes in the tar file, size]
Decode = Callable[[dict[str, bytes], str], Any]  # (a sample's members by extension, where it is) -> item
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's key and extension of a member's name


def _index(path: Path) -> list[Sample]:
    """The samples of a tar shard, read from its headers alone (the members' data are skipped); a member
    whose data would run past the end of the file means the shard was cut short."""
    samples: list[Sample] = []
    key = None
    try:
        size = path.stat().st_size
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if member.offset_data + member.size > size:  # tarfile stops there without a word
                    raise UserError(
                        f"data.root: {path} is truncated: its member {member.name} needs {member.size} bytes from byte "
                        f"{member.offset_data}, but the file ends at byte {size}; copy the shard again or remove it"
                    )
                found = _KEY.match(member.name) if member.isfile() else None
                if found is None:
                    continue
                if found.group(1) != key:
                    key = found.group(1)
                    samples.append({})
                samples[-1][found.group(2).lower()] = [member.offset_data, member.size]
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"data.root: {path} is not a tar file that can be read ({exc}); replace or remove it") from None
    return samples


def _cached_index(path: Path) -> list[Sample]:
    """The shard's index, from the cache when one was stored for this path, size and mtime; else read from
    its headers and stored (each process writes its own file and renames it in place)."""
    from trainwright.data.text import cache_folder

    status = path.stat()
    key = hashlib.sha256(f"1\0{path.absolute()}\0{status.st_size}\0{status.st_mtime_ns}".encode()).hexdigest()
    cached = cache_folder() / "shard-index" / f"{key[:32]}.json"
    try:
        return json.loads(cached.read_text())
    except (OSError, ValueError):  # none yet, or damaged: read the headers again
        pass
    samples = _index(path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cached, json.dumps(samples, separators=(",", ":")))
    except OSError:  # a read-only cache: the index is read again next time
        pass
    return samples


class ShardSamples(IterableDataset):
    """The samples of some tar shards, each decoded from its `inputs` and `targets` members by `decode`."""

    def __init__(self, shards: list[Path], decode: Decode, keys: tuple[str, str]) -> None:
        self.shards, self.decode, self.keys = shards, decode, keys
        self.index = [_cached_index(path) for path in shards]
        self.starts = np.cumsum([0] + [len(samples) for samples in self.index]).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    def __iter__(self) -> Iterator[Any]:
        """Every sample as stored (trainwright itself reads through `stream`)."""
        return self.stream(EVAL_EPOCH, iter(range(len(self))), 0)

    def _shard_order(self, seed: int, epoch: int) -> tuple[list[int], list[int]]:
        """The shards in `epoch`'s order (drawn from (seed, epoch); EVAL_EPOCH: as stored) and the position in
        the epoch's stream at which each begins."""
        count = len(self.shards)
        order = list(range(count)) if epoch == EVAL_EPOCH else epoch_order(count, seed, epoch).tolist()
        return order, np.cumsum([0] + [len(self.index[shard]) for shard in order]).tolist()

    def sample_ids(self, seed: int, epoch: int) -> torch.Tensor:
        """The stored sample numbers in `epoch`'s order: each shard's samples in turn."""
        order, _ = self._shard_order(seed, epoch)
        return torch.cat([torch.arange(self.starts[s], self.starts[s + 1]) for s in order] or [torch.arange(0)])

    def stream(self, epoch: int, positions: Iterator[int], seed: int) -> Iterator[Any]:
        """The samples at `positions` of `epoch`'s order, each read by seeking to its members."""
        order, begins = self._shard_order(seed, epoch)
        turn, file = -1, None
        try:
            for position in positions:
                at = bisect.bisect_right(begins, position) - 1  # the shard's turn in the order (empty ones skipped)
                if at != turn or file is None:
                    if file is not None:
                        file.close()
                    turn, file = at, open(self.shards[order[at]], "rb")
                yield self._read(file, order[at], position - begins[at])
        finally:
            if file is not None:
                file.close()

    def _read(self, file: BinaryIO, shard: int, number: int) -> Any:
        sample, members = self.index[shard][number], {}
        for key in self.keys:
            if key not in sample:
                raise UserError(
                    f"{self.shards[shard]}: sample {number} has no .{key} member (it has: "
                    f"{', '.join('.' + ext for ext in sorted(sample))}); every sample needs .{self.keys[0]} and "
                    f".{self.keys[1]} (data.inputs, data.targets)"
                )
            offset, size = sample[key]
            file.seek(offset)
            members[key] = file.read(size)
        return self.decode(members, f"{self.shards[shard]}, sample {number}")

    def fingerprint(self) -> dict[str, Any]:
        """Each shard's name, size, mtime and number of samples (no data read)."""
        listed = []
        for path, samples in zip(self.shards, self.index):
            status = path.stat()
            listed.append({"name": path.name, "bytes": status.st_size, "mtime_ns": status.st_mtime_ns,
                           "samples": len(samples)})
        return {"shards": listed, "keys": list(self.keys)}


def _decoder(inputs: str, targets: str, task: Task, transform: Any, mode: ImageMode) -> Decode:
    """How a sample's members become (input, target): .npy arrays as stored, images decoded by torchvision
    (uint8) and sent through `transform`; the target is a class index (.cls, text) or a number, checked
    against the task."""
    from torchvision.io import ImageReadMode, decode_image

    image = f".{inputs}" in IMAGE_SUFFIXES

    def decode(members: dict[str, bytes], where: str) -> tuple[torch.Tensor, Any]:
        data = members[inputs]
        try:
            if image:
                raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                value = transform(decode_image(raw, mode=ImageReadMode.RGB if mode == "rgb" else ImageReadMode.GRAY))
            elif inputs == "npy":
                value = torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))
            else:
                raise UserError(f"data.inputs: cannot decode .{inputs} members (choose npy or an image: png, jpg, ...)")
            text = members[targets].decode().strip()
            target: Any = int(text) if kind_of(task).class_index_targets else torch.tensor([float(text)])
        except UserError:
            raise
        except (ValueError, RuntimeError, OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{where}: cannot decode it ({exc}); replace or remove the shard") from None
        check_targets(torch.as_tensor([target]), task, lambda _: f"{where} (.{targets})")
        return value, target

    return decode


def _shards(root: Path, pattern: str, key: str) -> list[Path]:
    found = sorted(path for path in Path(root).glob(pattern) if path.is_file())
    if not found:
        raise UserError(f"data.{key}: no tar shards match {pattern!r} in {root}")
    return found


# registered as "shards" in components.py; its `root` is pinned (data/paths.py)
def shards(
    root: Path,
    train: str = "train-*.tar",
    val: str = "val-*.tar",
    inputs: str = "npy",
    targets: str = "cls",
    task: RowTaskKind = "multiclass",
    class_names: list[str] | None = None,
    train_transforms: list[dict[str, Any]] | None = None,
    eval_transforms: list[dict[str, Any]] | None = None,
    mode: Literal["rgb", "grey"] = "rgb",
) -> DataBundle:
    """Tar shards under `root` (`train` and `val`: glob patterns), samples of an `inputs` member (npy, or
    an image: png, jpg, ...) and a `targets` member (cls: a class index as text; for regression or binary, a
    number). Image pipelines as image_folder's; a multiclass task needs `class_names`."""
    if KINDS[task].class_index_targets and not class_names:
        raise UserError("data.class_names: a multiclass shards data set needs its class names, in class-index order")
    eval_steps = eval_transforms or DEFAULT_PIPELINE
    train_pipeline = build_pipeline(train_transforms or DEFAULT_PIPELINE, "data.train_transforms")
    kind = Task(task, tuple(class_names or ()))
    train_decode = _decoder(inputs, targets, kind, train_pipeline, mode)
    eval_decode = _decoder(inputs, targets, kind, build_pipeline(eval_steps, "data.eval_transforms"), mode)
    keys = (inputs.lower(), targets.lower())
    return DataBundle(
        train=ShardSamples(_shards(root, train, "train"), train_decode, keys),
        val=ShardSamples(_shards(root, val, "val"), eval_decode, keys),
        task=kind,
        describe_input=lambda i: f"sample {i}",
        preprocessing={"eval_transforms": eval_steps, "mode": mode, "inputs": inputs},
    )


def shard_inputs(source: Any, record: dict[str, Any], batch_size: int) -> Iterator[Any]:
    """New inputs for a shards run: as `npy` reads them (a .npy file of rows) for .npy samples, as
    `image_folder` does (images through the run's eval pipeline) for image samples."""
    from trainwright.data.arrays import array_rows
    from trainwright.data.folders import folder_images

    reader = array_rows if record.get("preprocessing", {}).get("inputs") == "npy" else folder_images
    return reader(source, record, batch_size)

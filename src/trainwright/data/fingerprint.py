"""The record of the data a run trained on (the run dir's data.json): their fingerprint, which every
later command (resume, eval, predict) compares its own data against, the preprocessing statistics, and
the task (which `predict --input` uses without the training data). (Their paths are pinned in the recipe:
data/paths.py.)

The fingerprint is of what the data ARE, never of the items served (random augmentation changes those on
every read), and it takes no pass over the data:
  * every file the data set read (`DataBundle.sources`): its size, mtime and sha256; the sha256 is read
    once and kept in data.json, and later commands reuse it while the file's path, size and mtime are
    unchanged;
  * a split held as tensors: the sha256 of its tensors (in memory already; data generated in memory are
    fingerprinted this way);
  * a split served item by item: what the data set declares with a `fingerprint()` method (any JSON value,
    e.g. the image folder's listing of files with their sizes and mtimes, an array's sampled hash);
    without one, its number of items and its class alone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from trainwright.data.bundle import DataBundle, TensorSplit, split_size
from trainwright.data.paths import ALLOW_FLAG
from trainwright.errors import UserError
from trainwright.run.files import sha256, warn


def _digest_tensors(digest: Any, *tensors: torch.Tensor) -> None:
    for tensor in tensors:
        digest.update(f"{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())


def split_fingerprint(split: Dataset) -> dict[str, Any]:
    """A split's number of items and what identifies its content (see the module's docstring)."""
    declared = getattr(split, "fingerprint", None)
    if callable(declared):
        return {"items": split_size(split), "declared": json.loads(json.dumps(declared()))}
    if isinstance(split, TensorSplit):
        digest = hashlib.sha256()
        _digest_tensors(digest, split.inputs, split.targets)
        return {"items": len(split), "sha256": digest.hexdigest()}
    kind = type(split)
    return {"items": split_size(split), "type": f"{kind.__module__}.{kind.__qualname__}"}


SAMPLES, SAMPLE_BYTES = 64, 1 << 16


def sampled_file_fingerprint(path: Path) -> dict[str, Any]:
    """A large file's name, size, mtime and the sha256 of SAMPLES evenly spaced blocks of SAMPLE_BYTES (the
    first and the last among them): 4 MiB read whatever the size."""
    status = Path(path).stat()
    digest, size = hashlib.sha256(), status.st_size
    with open(path, "rb") as file:
        for i in range(SAMPLES):
            file.seek(max(0, size - SAMPLE_BYTES) * i // (SAMPLES - 1))
            digest.update(file.read(SAMPLE_BYTES))
    return {
        "name": Path(path).name,
        "bytes": size,
        "mtime_ns": status.st_mtime_ns,
        "sampled_sha256": digest.hexdigest(),
    }


def file_fingerprint(path: Path, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Path, size, mtime and sha256 of a file; the sha256 is `previous`'s (a record of the same file) when
    the path, size and mtime are unchanged, so it is read once."""
    path = Path(path).absolute()
    status = path.stat()
    record = {"path": str(path), "bytes": status.st_size, "mtime_ns": status.st_mtime_ns}
    same = previous is not None and all(previous.get(key) == value for key, value in record.items())
    record["sha256"] = previous["sha256"] if same and previous is not None else sha256(path)
    return record


def data_record(bundle: DataBundle, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """What data.json holds: the fingerprint (files and splits), the preprocessing statistics and the task;
    `previous`: the run's data.json, whose file hashes are reused for unchanged files."""
    splits = {"train": bundle.train, "val": bundle.val}
    if bundle.test is not None and bundle.test is not bundle.val:
        splits["test"] = bundle.test
    before = (previous or {}).get("files", {})
    return {
        "files": {role: file_fingerprint(Path(path), before.get(role)) for role, path in bundle.sources.items()},
        "splits": {name: split_fingerprint(split) for name, split in splits.items()},
        "preprocessing": bundle.preprocessing,
        "task": bundle.task.to_record(),
    }


def _show_split(record: dict[str, Any]) -> str:
    if "sha256" in record:
        return f"{record['items']} items (sha256 {record['sha256'][:12]})"
    if "declared" in record:
        text = json.dumps(record["declared"], sort_keys=True)
        return f"{record['items']} items (declared {hashlib.sha256(text.encode()).hexdigest()[:12]})"
    return f"{record['items']} items"


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """How the current data differ from the recorded ones ([] when they are the same data)."""
    current = json.loads(json.dumps(current))  # compared as data.json holds it (tuples as lists)
    found = []
    for role, before in saved.get("files", {}).items():
        now = current["files"].get(role)
        if now is None or (now["bytes"], now["sha256"]) != (before["bytes"], before["sha256"]):
            shown = f"{now['path']}: {now['bytes']} bytes, sha256 {now['sha256'][:12]}" if now else "no such file"
            found.append(
                f"{role}: the run trained on {before['path']} ({before['bytes']} bytes, sha256 "
                f"{before['sha256'][:12]}); now {shown}"
            )
    for name, before in saved.get("splits", {}).items():
        now = current["splits"].get(name, {"items": 0})
        if now != before:
            detail = _declared_difference(before.get("declared"), now.get("declared"))
            found.append(
                f"{name} split: {_show_split(before)} when the run trained, now {_show_split(now)}{detail}"
            )
    if saved.get("preprocessing", {}) != current.get("preprocessing", {}):
        found.append("preprocessing statistics (fill values, means, standard deviations or categories) differ")
    return found


def _declared_difference(before: Any, now: Any) -> str:
    """What differs between two declared fingerprints that are mappings (e.g. which files changed)."""
    if not (isinstance(before, dict) and isinstance(now, dict)):
        return ""
    keys = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    return f": {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} differ" if keys else ""


def check_same_data(saved: dict[str, Any] | None, current: dict[str, Any], where: Path, allow_change: bool) -> None:
    """Refuse data that differ from the recorded ones (UserError), unless `allow_change`: then warn."""
    if saved is None:  # nothing recorded yet (a fresh start)
        return
    found = differences(saved, current)
    if not found:
        return
    listing = "\n  ".join(found)
    if not allow_change:
        raise UserError(
            f"the data differ from those the run in {where} trained on:\n  {listing}\nPoint the recipe at the "
            f"original data, or pass {ALLOW_FLAG} to use these data anyway"
        )
    warn(f"the data differ from those the run in {where} trained on ({ALLOW_FLAG}):\n  {listing}")

"""The record of the data a run trained on (the run dir's data.json): their fingerprint, which every
later command (resume, eval) compares its own data against, the preprocessing statistics, and the task
(which `predict --input` uses without the training data). (Their paths are pinned in the recipe:
data/paths.py.)

The fingerprint holds the size and sha256 of every file the data set read and the sha256 of every
split's tensors (for data generated in memory, that is all there is), so data that differ in any
way, files or preparation, are noticed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from trainwright.data.bundle import DataBundle, TensorSplit
from trainwright.data.loading import eval_indices, iterate
from trainwright.data.paths import ALLOW_FLAG
from trainwright.errors import UserError
from trainwright.files import sha256, warn


def _digest_tensors(digest: Any, *tensors: torch.Tensor) -> None:
    for tensor in tensors:
        digest.update(f"{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())


def _split_fingerprint(split: Dataset) -> dict[str, Any]:
    """Items and sha256 of a split's inputs and targets (a split served item by item is read once)."""
    digest = hashlib.sha256()
    if isinstance(split, TensorSplit):
        _digest_tensors(digest, split.inputs, split.targets)
    else:
        for batch in iterate(split, (index for index, _ in eval_indices(len(split), 1024, 0, 1))):
            _digest_tensors(digest, *(batch.values() if isinstance(batch, Mapping) else batch))  # tuple or named
    return {"items": len(split), "sha256": digest.hexdigest()}


def data_record(bundle: DataBundle) -> dict[str, Any]:
    """What data.json holds: the fingerprint (files and splits), the preprocessing statistics and the task."""
    splits = {"train": bundle.train, "val": bundle.val}
    if bundle.test is not None and bundle.test is not bundle.val:
        splits["test"] = bundle.test
    return {
        "files": {
            role: {"path": str(Path(path).absolute()), "bytes": Path(path).stat().st_size, "sha256": sha256(Path(path))}
            for role, path in bundle.sources.items()
        },
        "splits": {name: _split_fingerprint(split) for name, split in splits.items()},
        "preprocessing": bundle.preprocessing,
        "task": bundle.task.to_record(),
    }


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
        now = current["splits"].get(name, {"items": 0, "sha256": ""})
        if now != before:
            found.append(
                f"{name} split: {before['items']} items (sha256 {before['sha256'][:12]}) when the run trained, now "
                f"{now['items']} items (sha256 {now['sha256'][:12]})"
            )
    if saved.get("preprocessing", {}) != current.get("preprocessing", {}):
        found.append("preprocessing statistics (fill values, means, standard deviations or categories) differ")
    return found


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

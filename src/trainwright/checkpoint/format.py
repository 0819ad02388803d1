"""The checkpoint folder format: folder names, the sha256 manifest written last, and verification.

A checkpoint is `checkpoints/step_XXXXXXXX/` holding only safetensors and JSON files. It is written
as `checkpoints/.tmp-step_XXXXXXXX/` and renamed when complete; `manifest.json` lists every other file
with its size and sha256, so a folder named `step_*` is either complete or detectably damaged.
Nothing here is ever read with pickle or torch.load.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwright.files import fsync_path, normalize_mode, sha256, write_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRAINER_FILE = "trainer.json"  # TrainState
RECIPE_FILE = "recipe.json"  # the resolved recipe the state was trained with
TMP_PREFIX = ".tmp-"
SHARDED_MODEL_DIR = "model"  # a sharded checkpoint's model shards (sharded.py)
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


@dataclass
class TrainState:
    """Everything about the loop's progress that a restart needs (the rest is tensors)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # global batches of `epoch` already trained on
    samples_seen: int = 0
    loss_sum: float = 0.0  # training loss not yet logged (so logged values match an uninterrupted run)
    loss_count: int = 0
    val_metrics: dict[str, float] = field(default_factory=dict)
    val_step: int = -1  # the step at which val_metrics were measured
    best_metric: float | None = None  # best value of checkpoint.monitor so far
    wandb_run_id: str = ""
    world_size: int = 1  # processes that saved it (each wrote its own RNG files)
    sampler_seed: int = 0  # the batch order is a function of (sampler_seed, epoch)
    recipe_digest: str = ""  # sha256 of the recipe the state was trained with
    precision: str = ""  # the mixed precision it was trained in ('' in checkpoints older than the field)
    steps_per_epoch: int = 0  # optimizer steps per epoch (0 in checkpoints older than the field)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def read_train_state(folder: Path) -> TrainState:
    return TrainState.from_json(json.loads((folder / TRAINER_FILE).read_text()))


def read_recipe(folder: Path) -> dict[str, Any]:
    return json.loads((folder / RECIPE_FILE).read_text())


def is_sharded(folder: Path) -> bool:
    """Whether a checkpoint holds sharded model and optimizer state (strategy fsdp) rather than full."""
    return (folder / SHARDED_MODEL_DIR).is_dir()


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def is_step_dir(path: Path) -> bool:
    return path.is_dir() and _STEP_DIR.match(path.name) is not None


def step_of(folder: Path) -> int:
    """The step of a checkpoint folder named step_XXXXXXXX."""
    return int(_STEP_DIR.match(folder.name).group(1))


def looks_like_safetensors(path: Path) -> bool:
    """A whole safetensors file: an 8-byte little-endian header length, a JSON object, then exactly the
    bytes its tensors' offsets cover (so a truncated file is caught without loading it)."""
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(9)
        if len(head) < 9 or head[8:9] != b"{":
            return False
        (header_len,) = struct.unpack("<Q", head[:8])
        if 8 + header_len > size:
            return False
        file.seek(8)
        try:
            header = json.loads(file.read(header_len))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return False
    return 8 + header_len + end == size


def _files(folder: Path) -> list[Path]:
    """Every file under `folder`, subfolders included, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


def write_manifest(folder: Path, step: int) -> None:
    """fsync every file and subfolder of `folder`, then list the files (paths relative to it) with size and
    sha256 in manifest.json, written last."""
    files = {}
    for path in _files(folder):
        normalize_mode(path)
        fsync_path(path)
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": sha256(path)}
    for sub in sorted(p for p in folder.rglob("*") if p.is_dir()):
        fsync_path(sub)
    write_json(folder / MANIFEST, {"format": FORMAT_VERSION, "step": step, "files": files})
    fsync_path(folder / MANIFEST)
    fsync_path(folder)


def verify(folder: Path) -> str | None:
    """Why `folder` is not a usable checkpoint, or None when every file matches its manifest."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return "manifest.json is missing (the save did not finish)"
    try:
        listed: dict[str, dict[str, Any]] = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return "manifest.json is unreadable"
    present = {p.relative_to(folder).as_posix() for p in _files(folder)} - {MANIFEST}
    for name in sorted(present - set(listed)):
        return f"unexpected file {name} (not in the manifest)"
    for name, entry in listed.items():
        path = folder / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            return f"the manifest names {name}, outside the checkpoint"
        if not path.is_file():
            return f"{name} is missing"
        if not name.endswith((".safetensors", ".json")):
            return f"{name} is neither safetensors nor JSON"
        if path.stat().st_size != entry["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {entry['bytes']}"
        if sha256(path) != entry["sha256"]:
            return f"{name} does not match its sha256 in the manifest"
        if name.endswith(".safetensors") and not looks_like_safetensors(path):
            return f"{name} is not a safetensors file (refusing to unpickle or load it)"
    return None

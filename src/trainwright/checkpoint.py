"""Checkpoints: full training state in safetensors + JSON, written atomically, verified before use.

Layout of `checkpoints/step_XXXXXXXX/` (every file is listed with its size and sha256 in manifest.json,
which is written last; the folder appears under its final name only once complete):

  model.safetensors        model weights
  optimizer.safetensors    optimizer state tensors, keyed '<param index>.<name>'
  optimizer.json           param groups and non-tensor optimizer state
  scheduler.json           LR scheduler state (null when the recipe has none)
  scaler.json              fp16 grad-scaler state (null unless fp16)
  rng_<rank>.safetensors   torch CPU/CUDA RNG states of process <rank>
  rng_<rank>.json          Python `random` and NumPy RNG states of process <rank>
  trainer.json             step, data position, samples seen, validation metrics, recipe digest, world size
  recipe.json              the resolved recipe the state was trained with
  manifest.json            names, sizes and sha256 of every other file

Nothing here is ever read with pickle or torch.load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from trainwright.errors import UserError
from trainwright.recipe import CheckpointConfig

FORMAT_VERSION = 1
STEP_DIR = re.compile(r"^step_(\d{8,})$")
TMP_PREFIX = ".tmp-"


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
    world_size: int = 1
    sampler_seed: int = 0  # the batch order is a function of (sampler_seed, epoch)
    recipe_digest: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Stateful:
    """The live objects a checkpoint saves and restores."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any | None
    scaler: Any | None


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def step_of(folder: Path) -> int:
    """The step of a checkpoint folder named step_XXXXXXXX."""
    return int(STEP_DIR.match(folder.name).group(1))


def _warn(message: str) -> None:
    print(f"trainwright: {message}", file=sys.stderr, flush=True)


# --- files --------------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    """Write JSON and fsync it (no NaN/Infinity tricks: values must be plain JSON)."""
    with path.open("w", encoding="utf-8") as file:
        json.dump(data, file, indent=1, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace `path` with new JSON content so a reader sees the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    write_json(tmp, data)
    os.replace(tmp, path)
    _fsync(path.parent)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then a JSON object."""
    with path.open("rb") as file:
        head = file.read(9)
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 8 + header_len <= path.stat().st_size


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """Write a model's weights as safetensors, atomically, with the metadata in sorted order.

    safetensors stores metadata from a hash map, so its order (and the file's bytes) would vary from
    process to process; sorting it makes equal weights give byte-identical files.
    """
    tmp = path.with_name(path.name + ".tmp")
    save_model(model, str(tmp), metadata=metadata)
    with tmp.open("r+b") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        canonical = json.dumps(header, separators=(",", ":")).encode()
        file.seek(8)
        file.write(canonical.ljust(length))  # same keys and values, so never longer than before
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


# --- state <-> tensors and JSON -----------------------------------------------------------------


def optimizer_to_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors and JSON (param groups, non-tensor per-param values)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], live_groups: list[dict[str, Any]]
) -> dict[str, Any]:
    """Rebuild an optimizer state_dict; JSON lists become tuples where the live optimizer uses tuples."""
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = tensor
    for param_id, values in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    groups = []
    for saved, live in zip(meta["param_groups"], live_groups):
        groups.append({k: tuple(v) if isinstance(live.get(k), tuple) else v for k, v in saved.items()})
    return {"state": state, "param_groups": groups}


def rng_to_files() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states: torch (CPU, CUDA) as tensors, Python and NumPy as JSON."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return tensors, {
        "python": [version, list(words), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }


def rng_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[f"cuda_{i}"] for i in range(torch.cuda.device_count()) if f"cuda_{i}" in tensors]
    if cuda and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, words, gauss = meta["python"]
    random.setstate((version, tuple(words), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# --- verification -------------------------------------------------------------------------------


def verify(folder: Path) -> str | None:
    """Why `folder` is not a usable checkpoint, or None when every file matches its manifest."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        return "manifest.json is missing (the save did not finish)"
    try:
        manifest = json.loads(manifest_path.read_text())
        listed: dict[str, dict[str, Any]] = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return "manifest.json is unreadable"
    present = {p.name for p in folder.iterdir()} - {"manifest.json"}
    for name in sorted(present - set(listed)):
        return f"unexpected file {name} (not in the manifest)"
    for name, entry in listed.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if not name.endswith((".safetensors", ".json")):
            return f"{name} is neither safetensors nor JSON"
        if path.stat().st_size != entry["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {entry['bytes']}"
        if _sha256(path) != entry["sha256"]:
            return f"{name} does not match its sha256 in the manifest"
        if name.endswith(".safetensors") and not _looks_like_safetensors(path):
            return f"{name} is not a safetensors file (refusing to unpickle or load it)"
    return None


# --- the manager --------------------------------------------------------------------------------


class CheckpointManager:
    """Saves, finds, verifies, loads and prunes the checkpoints of one run dir."""

    def __init__(
        self, run_dir: Path, config: CheckpointConfig, rank: int, world_size: int, barrier: Callable[[], None]
    ) -> None:
        self.folder = run_dir / "checkpoints"
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.barrier = barrier
        self.is_main = rank == 0
        self.resumed_from: Path | None = None  # never pruned until this run completes


    # listing

    def step_dirs(self) -> list[Path]:
        """Finished checkpoint folders, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
        return sorted(found, key=step_of)

    def newest_valid(self) -> Path | None:
        """The newest checkpoint whose files match its manifest; damaged ones are reported and skipped."""
        for folder in reversed(self.step_dirs()):
            problem = verify(folder)
            if problem is None:
                return folder
            if self.is_main:
                _warn(f"checkpoint {folder} is damaged ({problem}); skipping it")
        return None

    # saving

    def save(self, stateful: Stateful, state: TrainState, recipe: dict[str, Any]) -> Path:
        """Write a checkpoint of `state.step` atomically; every process must call this."""
        final = self.folder / step_dir_name(state.step)
        tmp = self.folder / f"{TMP_PREFIX}{final.name}"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        rng_tensors, rng_meta = rng_to_files()
        save_file(rng_tensors, tmp / f"rng_{self.rank}.safetensors")
        write_json(tmp / f"rng_{self.rank}.json", rng_meta)
        self.barrier()
        if self.is_main:
            self._write_main_files(tmp, stateful, state, recipe)
            self._write_manifest(tmp, state.step)
            replaced = self.folder / f"{TMP_PREFIX}replaced-{final.name}"
            if final.exists():  # the same step saved again (e.g. by a resumed run): swap, then delete
                os.replace(final, replaced)
            os.replace(tmp, final)
            _fsync(self.folder)
            shutil.rmtree(replaced, ignore_errors=True)
            write_json_atomic(self.folder / "latest.json", {"step": state.step, "path": final.name})
            self.prune()
        self.barrier()
        return final

    def _write_main_files(self, tmp: Path, stateful: Stateful, state: TrainState, recipe: dict[str, Any]) -> None:
        save_model(stateful.model, str(tmp / "model.safetensors"), metadata={"step": str(state.step)})
        opt_tensors, opt_meta = optimizer_to_files(stateful.optimizer.state_dict())
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        write_json(tmp / "optimizer.json", opt_meta)
        write_json(tmp / "scheduler.json", stateful.scheduler.state_dict() if stateful.scheduler else None)
        write_json(tmp / "scaler.json", stateful.scaler.state_dict() if stateful.scaler else None)
        write_json(tmp / "trainer.json", dataclasses.asdict(state))
        write_json(tmp / "recipe.json", recipe)

    def _write_manifest(self, tmp: Path, step: int) -> None:
        files = {}
        for path in sorted(tmp.iterdir()):
            _fsync(path)
            files[path.name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        write_json(tmp / "manifest.json", {"format": FORMAT_VERSION, "step": step, "files": files})
        _fsync(tmp)

    # loading

    def load(self, folder: Path, stateful: Stateful) -> TrainState:
        """Restore every live object from a verified checkpoint and return the loop's state."""
        problem = verify(folder)
        if problem is not None:
            raise UserError(f"checkpoint {folder} cannot be used: {problem}")
        missing, unexpected = load_model(stateful.model, str(folder / "model.safetensors"), strict=False)
        if missing or unexpected:
            raise UserError(
                f"checkpoint {folder} does not fit this recipe's model (missing {sorted(missing)}, "
                f"unexpected {sorted(unexpected)})"
            )
        opt_meta = json.loads((folder / "optimizer.json").read_text())
        opt_state = optimizer_from_files(
            load_file(folder / "optimizer.safetensors"), opt_meta, stateful.optimizer.state_dict()["param_groups"]
        )
        stateful.optimizer.load_state_dict(opt_state)
        for name, target in (("scheduler.json", stateful.scheduler), ("scaler.json", stateful.scaler)):
            saved = json.loads((folder / name).read_text())
            if target is not None and saved is not None:
                target.load_state_dict(saved)
        state = TrainState.from_json(json.loads((folder / "trainer.json").read_text()))
        self.resumed_from = folder
        if (folder / f"rng_{self.rank}.json").exists():
            rng_from_files(load_file(folder / f"rng_{self.rank}.safetensors"), json.loads((folder / f"rng_{self.rank}.json").read_text()))
        else:  # more processes than the checkpoint had: a fresh, still deterministic stream
            torch.manual_seed(state.sampler_seed * 1_000_003 + state.step * 101 + self.rank)
        return state

    # retention

    def prune(self) -> None:
        """Keep the newest `keep_last` checkpoints, the `keep_best` best by `monitor` and the one this run
        resumed from; delete the rest (so disk use stays bounded however often a run is requeued)."""
        folders = self.step_dirs()
        keep = set(folders[-self.config.keep_last :]) | {self.resumed_from}
        if self.config.keep_best:
            scored = [(score, folder) for folder in folders if (score := self._score(folder)) is not None]
            scored.sort(key=lambda item: item[0], reverse=self.config.mode == "max")
            best = [folder for _, folder in scored[: self.config.keep_best]]
            keep.update(best)
            if best:
                write_json_atomic(self.folder / "best.json", {"path": best[0].name, self.config.monitor: scored[0][0]})
        for folder in folders:
            if folder not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    def _score(self, folder: Path) -> float | None:
        """The monitored metric measured at this checkpoint's own step, if any."""
        try:
            state = json.loads((folder / "trainer.json").read_text())
        except (OSError, ValueError):
            return None
        if state.get("val_step") != state.get("step"):
            return None
        return state.get("val_metrics", {}).get(self.config.monitor)

    def remove_unfinished(self) -> None:
        """Delete folders of saves that were killed before they finished (they are never complete)."""
        if self.is_main and self.folder.is_dir():
            for path in self.folder.iterdir():
                if path.name.startswith(TMP_PREFIX) and path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.name.startswith(TMP_PREFIX) or path.name.endswith(".json.tmp"):
                    path.unlink()

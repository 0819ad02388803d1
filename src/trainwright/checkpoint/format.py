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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwright.checkpoint.safetensors_header import header_problem, read_header
from trainwright.checkpoint.schema import (
    CallbacksFile,
    FullOptimizerFile,
    Manifest,
    RngFile,
    TrainStateFile,
    schema_problem,
)
from trainwright.checkpoint.shard_files import shards_problem
from trainwright.run.files import fsync_path, normalize_mode, sha256, write_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRAINER_FILE = "trainer.json"  # TrainState
RECIPE_FILE = "recipe.json"  # the resolved recipe the state was trained with
TMP_PREFIX = ".tmp-"
SHARDED_MODEL_DIR = "model"  # a sharded checkpoint's model shards (sharded.py)
SHARDED_OPTIMIZER_DIR = "optimizer"  # and its optimizer state shards
SHARDED_EMA_DIR = "ema"  # and, with trainer.ema, its averaged weights' shards
EMA_FILE = "ema.safetensors"  # with trainer.ema, a full checkpoint's averaged weights (ema.py)
# The key of a sharded checkpoint's optimizer.json that lists the tensors of optimizer/ (none for plain SGD);
# checkpoints written before it was recorded lack it.
OPTIMIZER_TENSORS = "tensors"
JSON_STATE_FILES = ("scheduler.json", "scaler.json")  # null, or the object's state_dict
CALLBACKS_FILE = "callbacks.json"  # with `callbacks` in the recipe: their states (callbacks.py)
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
MAX_JSON_DEPTH = 64  # a checkpoint's JSON nests a few levels (a chained scheduler's state: 4)
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"')


@dataclass
class TrainState:
    """Everything about the loop's progress that a restart needs (the rest is tensors)."""

    step: int = 0
    epoch: int = 0  # epochs done: the 0-based index of the epoch in progress (users read epoch_number)
    batch_in_epoch: int = 0  # global batches of `epoch` already trained on
    samples_seen: int = 0
    loss_sum: float = 0.0  # training loss not yet logged (so logged values match an uninterrupted run)
    loss_count: int = 0
    val_metrics: dict[str, float] = field(default_factory=dict)
    val_step: int = -1  # the step at which val_metrics were measured
    test_metrics: dict[str, float] = field(default_factory=dict)  # trainer.test_at_end's, after the last validation
    best_metric: float | None = None  # best value of checkpoint.monitor so far
    wandb_run_id: str = ""
    world_size: int = 1  # processes that saved it (each wrote its own RNG files)
    sampler_seed: int = 0  # the batch order is a function of (sampler_seed, epoch)
    recipe_digest: str = ""  # sha256 of the recipe the state was trained with
    precision: str = ""  # the mixed precision it was trained in ('' in checkpoints older than the field)
    steps_per_epoch: int = 0  # optimizer steps per epoch (0 in checkpoints older than the field)
    early_best: float | None = None  # trainer.early_stopping: the best value of its monitor so far
    early_best_epoch: int = 0  # the epoch that reached it
    early_waited: int = 0  # validations since then without improvement
    stopped_early_epoch: int = 0  # the epoch after which early stopping ended the run (0: it did not)
    stopped_by_callback: str = ""  # the callback that ended the run (request_stop), '' when none did
    stop_reason: str = ""  # ... and why it did

    def epoch_number(self) -> int:
        """The epoch the last step belongs to, counted from 1 as every log, message and summary shows it
        (`epoch` counts the epochs done; 0 before the first step)."""
        return self.epoch + (1 if self.batch_in_epoch else 0)

    def ended_early(self) -> bool:
        """Whether early stopping or a callback ended the run before its last step."""
        return bool(self.stopped_early_epoch or self.stopped_by_callback)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def read_train_state(folder: Path) -> TrainState:
    """trainer.json of a verified checkpoint (`verify` checked it against its schema)."""
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
    match = _STEP_DIR.match(folder.name)
    if match is None:
        raise ValueError(f"{folder} is not a checkpoint folder (step_XXXXXXXX)")
    return int(match.group(1))


def looks_like_safetensors(path: Path) -> bool:
    """A whole, well-formed safetensors file (its header checked as a whole: safetensors_header.py), so a
    truncated or crafted file is caught without loading it."""
    return header_problem(path) is None


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
    """Why `folder` is not a usable checkpoint, or None when every file matches its manifest and holds what
    its kind of file must hold (checked as a whole, so that a load never meets a damaged or crafted file)."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return "manifest.json is missing (the save did not finish)"
    manifest, problem = _read_json(manifest_path, Manifest)
    if problem:
        return problem
    listed = manifest["files"]
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
        if name.endswith(".safetensors") and (problem := header_problem(path)):
            return f"{name} is not a safetensors file ({problem}; refusing to unpickle or load it)"
    return _contents_problem(folder, manifest["step"])


def _contents_problem(folder: Path, step: int) -> str | None:
    """Whether the files a load reads are all there and hold what it expects (each file is already a
    well-formed safetensors or JSON file of the manifest)."""
    state, problem = _read_json(folder / TRAINER_FILE, TrainStateFile)
    if problem:
        return problem
    if state["step"] != step:
        return f"{TRAINER_FILE} is of step {state['step']}, the manifest of step {step}"
    if _STEP_DIR.match(folder.name) and step_of(folder) != step:
        return f"the folder is named for step {step_of(folder)}, its manifest says step {step}"
    recipe, problem = _read_json(folder / RECIPE_FILE)
    if problem or not isinstance(recipe, dict):
        return problem or f"{RECIPE_FILE} is not a recipe mapping"
    if problem := _position_problem(state, recipe):
        return problem
    for name in JSON_STATE_FILES:
        content, problem = _read_json(folder / name)
        if problem or not (content is None or isinstance(content, dict)):
            return problem or f"{name} is neither null nor a state mapping"
    if (folder / CALLBACKS_FILE).is_file() and (problem := _read_json(folder / CALLBACKS_FILE, CallbacksFile)[1]):
        return problem
    for rank in range(state.get("world_size", 1)):
        _, problem = _read_json(folder / f"rng_{rank}.json", RngFile)
        if problem or (problem := _tensors_problem(folder / f"rng_{rank}.safetensors", r"^torch_cpu$|^cuda_\d+$")):
            return problem
        if "torch_cpu" not in read_header(folder / f"rng_{rank}.safetensors").tensors:
            return f"rng_{rank}.safetensors holds no torch_cpu state"
    if is_sharded(folder):
        return _sharded_problem(folder)
    return _full_problem(folder)


def _position_problem(state: dict[str, Any], recipe: dict[str, Any]) -> str | None:
    """Whether trainer.json's place in its epoch lies beyond the epoch it records (a resume would find no
    batch to train on)."""
    trainer = recipe.get("trainer")
    accum = trainer.get("grad_accum_steps", 1) if isinstance(trainer, dict) else 1
    if type(accum) is not int or accum < 1:
        return f"{RECIPE_FILE} holds trainer.grad_accum_steps={accum!r}, not a whole number of at least 1"
    batches = state["steps_per_epoch"] * accum
    if state["steps_per_epoch"] and state["batch_in_epoch"] > batches:
        return (f"{TRAINER_FILE} is at batch {state['batch_in_epoch']} of an epoch of {batches} batches "
                f"({state['steps_per_epoch']} steps)")
    return None


def _full_problem(folder: Path) -> str | None:
    meta, problem = _read_json(folder / "optimizer.json", FullOptimizerFile)
    if problem:
        return problem
    problem = _tensors_problem(folder / "model.safetensors") or _tensors_problem(
        folder / "optimizer.safetensors", r"^\d+\..+$"
    )
    if problem:
        return problem
    params = {index for group in meta["param_groups"] for index in group["params"]}
    used = {int(key.split(".", 1)[0]) for key in read_header(folder / "optimizer.safetensors").tensors}
    used |= {int(index) for index in meta["scalars"]}
    if not used <= params:
        return f"optimizer state names parameters {sorted(used - params)} that no parameter group holds"
    return None


def _sharded_problem(folder: Path) -> str | None:
    optimizer, problem = _read_json(folder / "optimizer.json")
    if problem or not isinstance(optimizer, dict):
        return problem or "optimizer.json is not a mapping"
    names = optimizer.get(OPTIMIZER_TENSORS)
    if names is not None and not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
        return f"optimizer.json's {OPTIMIZER_TENSORS!r} is not a list of tensor names"
    if names is None and not any((folder / SHARDED_OPTIMIZER_DIR).glob("*.safetensors")):
        names = []  # an older checkpoint of an optimizer without tensor state: the load compares with the live one
    parts = {SHARDED_MODEL_DIR: None, SHARDED_OPTIMIZER_DIR: None if names is None else set(names)}
    if (folder / SHARDED_EMA_DIR).is_dir():
        parts[SHARDED_EMA_DIR] = None
    for part, tensors in parts.items():
        if problem := shards_problem(folder / part, tensors):
            return problem
    return None


def _tensors_problem(path: Path, names: str = "") -> str | None:
    """A required safetensors file: there (the manifest checked its header) with tensor names matching `names`."""
    if not path.is_file():
        return f"{path.name} is missing"
    bad = [key for key in read_header(path).tensors if names and not re.match(names, key)]
    return f"{path.name} holds an unexpected tensor {bad[0]!r}" if bad else None


def _read_json(path: Path, schema: Any = None) -> tuple[Any, str | None]:
    """The content of a required JSON file and None, or None and why it cannot be used."""
    if not path.is_file():
        return None, f"{path.name} is missing"
    try:
        text = path.read_text(encoding="utf-8")
        if too_deep := json_depth_problem(text):
            return None, f"{path.name} is damaged ({too_deep})"
        content = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"{path.name} is not JSON ({exc})"
    problem = schema_problem(schema, text) if schema else None
    return (None, f"{path.name} is damaged ({problem})") if problem else (content, None)


def json_depth_problem(text: str) -> str | None:
    """Whether JSON `text` nests lists and objects deeper than MAX_JSON_DEPTH (found before json.loads, whose
    recursion such a file would exhaust), or None."""
    depth = 0
    for bracket in re.findall(r"[\[\]{}]", _JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            return f"it nests lists or objects more than {MAX_JSON_DEPTH} deep"
    return None

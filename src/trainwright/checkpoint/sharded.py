"""The model and optimizer files of a sharded checkpoint (strategy fsdp): every process writes its own
shards, and a checkpoint loads into any number of processes and into any strategy.

  model/shard-0000K-model-00001-of-00001.safetensors      process K-1's shards of the weights
  optimizer/shard-0000K-model-00001-of-00001.safetensors  its shards of the optimizer state (`state.<param>.<name>`)
  ema/shard-0000K-model-00001-of-00001.safetensors        with trainer.ema: its shards of the averaged weights
  optimizer.json                                          the non-tensor optimizer state (`param_groups.<param>.<key>`)
                                                          and the names of optimizer/'s tensors (`tensors`: none
                                                          for an optimizer without state, e.g. plain SGD)
  scheduler.json, scaler.json                             as in a full checkpoint

Written and read through torch.distributed.checkpoint's Hugging Face safetensors storage: each file's
`DCP_SHARDING_INFO` metadata gives every tensor's offsets in the whole, which is how a load reshards.
Only tensors go to that storage (it would pickle anything else); the rest is JSON.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors import safe_open
from safetensors.torch import load_file
from torch.distributed.checkpoint import (
    CheckpointException,
    HuggingFaceStorageReader,
    HuggingFaceStorageWriter,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor

from trainwright.checkpoint.expected import param_names, plain_optimizer
from trainwright.checkpoint.format import EMA_FILE, OPTIMIZER_TENSORS, SHARDED_EMA_DIR, SHARDED_MODEL_DIR, is_sharded
from trainwright.checkpoint.objects import (
    TrainObjects,
    json_states,
    optimizer_from_files,
    read_json_states,
    write_json_states,
)
from trainwright.checkpoint.ties import retied, tied_aliases, untied
from trainwright.distributed.processes import Processes
from trainwright.errors import UserError
from trainwright.run.files import write_json
from trainwright.training.ema import WeightAverage

MODEL_DIR = SHARDED_MODEL_DIR
OPTIMIZER_DIR = "optimizer"
_FLAT = StateDictOptions(flatten_optimizer_state_dict=True)


def write_sharded_state(folder: Path, objects: TrainObjects, processes: Processes) -> None:
    """Every process writes its shards; the main process the JSON files. A collective."""
    optimizer = plain_optimizer(objects.optimizer)
    aliases = tied_aliases(objects.model)
    model_state = untied(get_model_state_dict(objects.model, options=_model_options(objects)), aliases)
    tensors, other = _split(get_optimizer_state_dict(objects.model, optimizer, options=_FLAT))
    parts = [(MODEL_DIR, model_state), (OPTIMIZER_DIR, tensors)]
    if objects.ema is not None:
        parts.append((SHARDED_EMA_DIR, objects.ema.tensors()))
    for name, state in parts:
        dcp.save(state, storage_writer=HuggingFaceStorageWriter(str(folder / name), save_distributed=True))
    if processes.is_main:
        write_json(folder / "optimizer.json", {**other, OPTIMIZER_TENSORS: sorted(tensors)})
        write_json_states(folder, json_states(objects))


def read_sharded_state(folder: Path, objects: TrainObjects) -> None:
    """Load a sharded checkpoint into the live objects: a sharded model takes its own shards at any process
    count (a collective); an unsharded one reads the whole state on every process by itself."""
    collective = isinstance(objects.model, FSDPModule)
    optimizer = plain_optimizer(objects.optimizer)
    with _checkpoint_must_fit(folder):
        aliases = tied_aliases(objects.model)
        model_state = untied(get_model_state_dict(objects.model, options=_model_options(objects)), aliases)
        _load(model_state, folder / MODEL_DIR, collective)
        set_model_state_dict(objects.model, retied(model_state, aliases), options=_model_options(objects))
        tensors, other = _split(get_optimizer_state_dict(objects.model, optimizer, options=_FLAT))
        _load(tensors, folder / OPTIMIZER_DIR, collective)
        saved = json.loads((folder / "optimizer.json").read_text())
        saved.pop(OPTIMIZER_TENSORS, None)  # verified against optimizer/'s files; the load compares with `tensors`
        if set(saved) != set(other):
            raise UserError(f"checkpoint {folder} does not fit this recipe's optimizer (its parameter groups differ)")
        other = {key: tuple(value) if isinstance(other[key], tuple) else value for key, value in saved.items()}
        state: dict[str, Any] = {**tensors, **other}
        set_optimizer_state_dict(objects.model, optimizer, state, options=_FLAT)
        if objects.ema is not None:
            if not (folder / SHARDED_EMA_DIR).is_dir():
                raise UserError(f"checkpoint {folder} holds no {SHARDED_EMA_DIR}/ (it was saved without trainer.ema)")
            _load(objects.ema.tensors(), folder / SHARDED_EMA_DIR, collective)  # in place, shard by shard
    read_json_states(folder, objects)


def read_full_state_sharded(folder: Path, objects: TrainObjects, processes: Processes) -> None:
    """Load a full checkpoint (model.safetensors, optimizer.safetensors keyed by parameter index) into a
    sharded model: the main process reads the files and every process receives its shards."""
    optimizer = plain_optimizer(objects.optimizer)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=not objects.trained_only)
    model_state: dict[str, Any] = {}  # tensors (torch's state dict type is a wider union)
    optimizer_state: dict[str, Any] = {}
    if processes.is_main:
        model_state = retied(load_file(folder / "model.safetensors"), tied_aliases(objects.model))
        optimizer_state = _by_name(folder, param_names(objects.model, optimizer))
    with _checkpoint_must_fit(folder):
        set_model_state_dict(objects.model, model_state, options=options)
        if _holds_tensors(folder / "optimizer.safetensors"):
            set_optimizer_state_dict(objects.model, optimizer, optimizer_state, options=options)
        else:  # e.g. SGD without momentum: torch's broadcast needs a state tensor; only the groups are saved
            meta = json.loads((folder / "optimizer.json").read_text())
            optimizer.load_state_dict(optimizer_from_files({}, meta, optimizer.state_dict()["param_groups"]))
        if objects.ema is not None:
            _full_averages_into_shards(folder, objects.ema)
    read_json_states(folder, objects)


def _full_averages_into_shards(folder: Path, ema: WeightAverage) -> None:
    """A full checkpoint's ema.safetensors into sharded averages: every process reads the file and keeps
    its own shards (no communication)."""
    if not (folder / EMA_FILE).is_file():
        raise UserError(f"checkpoint {folder} holds no {EMA_FILE} (it was saved without trainer.ema)")
    saved = load_file(folder / EMA_FILE)
    ema.load({
        name: distribute_tensor(saved[name], average.device_mesh, average.placements, src_data_rank=None)
        if isinstance(average, DTensor) else saved[name]
        for name, average in ema.tensors().items()
    })


def _holds_tensors(path: Path) -> bool:
    """Whether a safetensors file holds any tensor (its header alone is read, on every process alike)."""
    with safe_open(path, "pt") as file:
        return bool(list(file.keys()))


def consolidated_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The whole model's weights of a verified checkpoint, full or sharded, in this one process (no process
    group): for `trainwright export`."""
    if not is_sharded(folder):
        return load_file(folder / "model.safetensors")
    return consolidated_part(folder / MODEL_DIR)


def consolidated_part(part: Path) -> dict[str, torch.Tensor]:
    """The whole tensors of one part of a sharded checkpoint (model/, ema/), in this one process."""
    metadata = HuggingFaceStorageReader(str(part)).read_metadata()
    tensors = {}
    for key, item in metadata.state_dict_metadata.items():
        if not isinstance(item, TensorStorageMetadata):
            raise UserError(f"checkpoint part {part} holds '{key}', which is not a tensor")
        tensors[key] = torch.empty(item.size, dtype=item.properties.dtype)
    _load(tensors, part, collective=False)
    return tensors


def _load(state: dict[str, Any], folder: Path, collective: bool) -> None:
    with warnings.catch_warnings():  # dcp says it assumes a single process: that is the intent here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=HuggingFaceStorageReader(str(folder)), no_dist=not collective)


@contextlib.contextmanager
def _checkpoint_must_fit(folder: Path) -> Iterator[None]:
    """A checkpoint whose tensors do not match the model's is one clear error."""
    try:
        yield
    except (CheckpointException, RuntimeError, KeyError, ValueError) as exc:  # CheckpointException is a BaseException
        raise UserError(f"checkpoint {folder} does not fit this recipe's model or optimizer: {exc}") from None


def _model_options(objects: TrainObjects) -> StateDictOptions:
    """With `trained_only` (an adapter), the frozen parameters are neither written nor read."""
    trained_only = objects.trained_only
    return StateDictOptions(ignore_frozen_params=trained_only, strict=not trained_only)


def _split(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return tensors, {k: v for k, v in state.items() if k not in tensors}


def _by_name(folder: Path, names: list[str]) -> dict[str, Any]:
    """A full checkpoint's optimizer state (keyed by parameter index) keyed by parameter name, as torch's
    `set_optimizer_state_dict` takes it."""
    tensors = load_file(folder / "optimizer.safetensors")
    meta = json.loads((folder / "optimizer.json").read_text())
    state: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(names[int(index)], {})[name] = tensor
    for index, values in meta["scalars"].items():
        state.setdefault(names[int(index)], {}).update(values)
    groups = [
        {**{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()},
         "params": [names[i] for i in group["params"]]}
        for group in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}

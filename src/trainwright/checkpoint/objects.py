"""The live objects a checkpoint saves and restores, and their states split into tensors (for
safetensors) and JSON (everything else)."""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from trainwright.checkpoint.format import CALLBACKS_FILE, TrainState
from trainwright.checkpoint.ties import state_dict_name, tied_aliases, untied
from trainwright.errors import UserError
from trainwright.run.files import write_json


@dataclass(frozen=True)
class TrainObjects:
    """The live objects of a run whose state a checkpoint holds (the model unwrapped from DDP)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any | None  # an LR scheduler (state_dict / load_state_dict)
    scaler: Any | None  # the fp16 grad scaler
    ema: Any | None = None  # the WeightAverage of trainer.ema (ema.py)
    callbacks: Any | None = None  # the run's Callbacks (callbacks.py) when the recipe has callbacks of its own
    trained_only: bool = False  # the model's frozen parameters are left out (an adapter's base: adapters.py)


def frozen_names(model: nn.Module) -> set[str]:
    """The state-dict names of the model's frozen parameters."""
    return {state_dict_name(name) for name, param in model.named_parameters(remove_duplicate=False)
            if not param.requires_grad}


def model_state(objects: TrainObjects) -> dict[str, torch.Tensor]:
    """What a full checkpoint holds of the model: its state dict, each tied parameter once; with
    `trained_only`, without the frozen parameters."""
    state = untied(objects.model.state_dict(), tied_aliases(objects.model))
    if not objects.trained_only:
        return state
    frozen = frozen_names(objects.model)
    return {name: tensor for name, tensor in state.items() if name not in frozen}


def json_states(objects: TrainObjects) -> dict[str, Any]:
    """File name -> content of scheduler.json and scaler.json (the LR scheduler and fp16 grad-scaler states,
    null when there is none) and, with callbacks, callbacks.json, copied so that training may go on while
    they are written."""
    states = copy.deepcopy({
        "scheduler.json": objects.scheduler.state_dict() if objects.scheduler else None,
        "scaler.json": objects.scaler.state_dict() if objects.scaler else None,
    })
    if objects.callbacks is not None:
        states[CALLBACKS_FILE] = objects.callbacks.states()  # a copy already
    return states


def write_json_states(folder: Path, states: dict[str, Any]) -> None:
    for name, content in states.items():
        write_json(folder / name, content)


def copied(tensors: dict[str, torch.Tensor], into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The tensors copied into CPU memory (a snapshot that later training steps do not change). `into`: the
    buffers of an earlier snapshot that nothing reads any more; a tensor of the same shape and dtype is
    copied into its buffer (2-3x faster than fresh memory, which the OS must first map page by page).
    Fresh buffers are pinned where CUDA is available, so copies from the GPU go at full speed."""
    into = into or {}
    snapshot = {}
    for key, value in tensors.items():
        buffer = into.get(key)
        if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
            buffer = torch.empty(value.shape, dtype=value.dtype, pin_memory=torch.cuda.is_available())
        snapshot[key] = buffer.copy_(value.detach())
    return snapshot


def read_json_states(folder: Path, objects: TrainObjects) -> None:
    for name, target in (("scheduler.json", objects.scheduler), ("scaler.json", objects.scaler)):
        saved = json.loads((folder / name).read_text())
        if target is not None and saved is not None:
            target.load_state_dict(saved)
    if objects.callbacks is not None:
        if not (folder / CALLBACKS_FILE).is_file():
            raise UserError(f"checkpoint {folder} holds no {CALLBACKS_FILE} (it was saved without callbacks)")
        objects.callbacks.load(json.loads((folder / CALLBACKS_FILE).read_text()), folder)


def optimizer_to_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (the live ones: `copied` snapshots them) and JSON (param
    groups, non-tensor per-param values)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{name}"] = value.detach()
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
    # legacy=True (the default) returns the tuple form; numpy's stub types both forms as one union
    name, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
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


def fresh_rng(state: TrainState, rank: int) -> None:
    """Seed a process the checkpoint has no RNG files for (a resume on more processes than saved it):
    a new stream, still a function of the seed, step and rank only."""
    torch.manual_seed(state.sampler_seed * 1_000_003 + state.step * 101 + rank)

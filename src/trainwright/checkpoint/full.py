"""The model, optimizer, scheduler and grad-scaler files of a full (unsharded) checkpoint, written by
the main process:

  model.safetensors        model weights (with an adapter: only those that train)
  optimizer.safetensors    optimizer state tensors, keyed '<param index>.<name>'
  optimizer.json           param groups and non-tensor optimizer state
  scheduler.json           LR scheduler state (null when the recipe has none)
  scaler.json              fp16 grad-scaler state (null unless fp16)
  ema.safetensors          the averaged parameters of trainer.ema (only when it is on)
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file

from trainwright.checkpoint.format import EMA_FILE
from trainwright.checkpoint.objects import (
    TrainObjects,
    copied,
    frozen_names,
    json_states,
    model_state,
    optimizer_from_files,
    optimizer_to_files,
    read_json_states,
    write_json_states,
)
from trainwright.errors import UserError
from trainwright.run.files import write_json


@dataclass(frozen=True)
class FullState:
    """The model and optimizer state of a full checkpoint as tensors and JSON, ready to be written."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    optimizer_meta: dict[str, Any]
    json_states: dict[str, Any]
    ema: dict[str, torch.Tensor] | None = None

    @classmethod
    def take(cls, objects: TrainObjects, reuse: FullState | None = None) -> FullState:
        """A copy of the live objects' state in CPU memory, so that training may go on while it is written;
        `reuse`: an earlier snapshot, written and no longer read, whose buffers the copy goes into."""
        optimizer, optimizer_meta = optimizer_to_files(objects.optimizer.state_dict())
        return cls(
            copied(model_state(objects), reuse.model if reuse else None),
            copied(optimizer, reuse.optimizer if reuse else None), copy.deepcopy(optimizer_meta), json_states(objects),
            copied(objects.ema.tensors(), reuse.ema if reuse else None) if objects.ema is not None else None,
        )

    def write(self, folder: Path, step: int) -> None:
        save_file(self.model, folder / "model.safetensors", metadata={"step": str(step)})
        save_file(self.optimizer, folder / "optimizer.safetensors")
        write_json(folder / "optimizer.json", self.optimizer_meta)
        write_json_states(folder, self.json_states)
        if self.ema is not None:
            save_file(self.ema, folder / EMA_FILE)


def read_full_state(folder: Path, objects: TrainObjects) -> None:
    """Restore every live object from the files of a verified checkpoint (safetensors' `load_model` expects
    a tied parameter under one of its names)."""
    loaded = load_model(objects.model, str(folder / "model.safetensors"), strict=False)
    missing, unexpected = set(loaded[0]), loaded[1]
    if objects.trained_only:  # the frozen base is the model as built
        missing -= frozen_names(objects.model)
    if missing or unexpected:
        raise UserError(
            f"checkpoint {folder} does not fit this recipe's model (missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)})"
        )
    opt_meta = json.loads((folder / "optimizer.json").read_text())
    opt_state = optimizer_from_files(
        load_file(folder / "optimizer.safetensors"), opt_meta, objects.optimizer.state_dict()["param_groups"]
    )
    objects.optimizer.load_state_dict(opt_state)
    read_json_states(folder, objects)
    if objects.ema is not None:
        if not (folder / EMA_FILE).is_file():
            raise UserError(f"checkpoint {folder} holds no {EMA_FILE} (it was saved without trainer.ema)")
        objects.ema.load(load_file(folder / EMA_FILE))

"""The model, optimizer, scheduler and grad-scaler files of a full (unsharded) checkpoint, written by
the main process:

  model.safetensors        model weights
  optimizer.safetensors    optimizer state tensors, keyed '<param index>.<name>'
  optimizer.json           param groups and non-tensor optimizer state
  scheduler.json           LR scheduler state (null when the recipe has none)
  scaler.json              fp16 grad-scaler state (null unless fp16)
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, load_model, save_file, save_model

from trainwright.checkpoint.objects import (
    TrainObjects, optimizer_from_files, optimizer_to_files, read_json_states, write_json_states,
)
from trainwright.errors import UserError
from trainwright.files import write_json


def write_full_state(folder: Path, objects: TrainObjects, step: int) -> None:
    save_model(objects.model, str(folder / "model.safetensors"), metadata={"step": str(step)})
    opt_tensors, opt_meta = optimizer_to_files(objects.optimizer.state_dict())
    save_file(opt_tensors, folder / "optimizer.safetensors")
    write_json(folder / "optimizer.json", opt_meta)
    write_json_states(folder, objects)


def read_full_state(folder: Path, objects: TrainObjects) -> None:
    """Restore every live object from the files of a verified checkpoint."""
    missing, unexpected = load_model(objects.model, str(folder / "model.safetensors"), strict=False)
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

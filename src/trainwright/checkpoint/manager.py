"""CheckpointManager: saves the live objects of a run atomically and restores them on resume.

Layout of `checkpoints/step_XXXXXXXX/` (see format.py for the manifest, full.py for the state files):

  model.safetensors, optimizer.safetensors, optimizer.json, scheduler.json, scaler.json
  rng_<rank>.safetensors   torch CPU/CUDA RNG states of process <rank>
  rng_<rank>.json          Python `random` and NumPy RNG states of process <rank>
  trainer.json             TrainState: step, data position, samples seen, validation metrics, ...
  recipe.json              the resolved recipe the state was trained with
  manifest.json            names, sizes and sha256 of every other file (written last)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from trainwright.checkpoint import retention
from trainwright.checkpoint.format import (
    RECIPE_FILE, TMP_PREFIX, TRAINER_FILE, TrainState, read_train_state, step_dir_name, write_manifest,
)
from trainwright.checkpoint.full import read_full_state, write_full_state
from trainwright.checkpoint.objects import TrainObjects, fresh_rng, rng_from_files, rng_to_files
from trainwright.checkpoint.policy import SavePolicy
from trainwright.files import WRITE_ERRORS, replace_dir, write_json
from trainwright.processes import Processes
from trainwright.recipe import CheckpointConfig


class CheckpointManager:
    """Saves, restores and prunes the checkpoints of one run dir for the live objects it was given."""

    def __init__(self, folder: Path, config: CheckpointConfig, processes: Processes, objects: TrainObjects) -> None:
        self.folder = folder
        self.config = config
        self.processes = processes
        self.objects = objects
        self.policy = SavePolicy(config)
        self.resumed_from: Path | None = None  # never pruned until this run completes

    def should_save(self, step: int, epoch: int, **when: bool) -> bool:
        """Ask the save policy (see SavePolicy.should_save); every process gets the same answer."""
        return self.policy.should_save(step, epoch, **when)

    def save(self, state: TrainState, recipe: dict[str, Any]) -> Path:
        """Write a checkpoint of `state.step` atomically; every process must call this."""
        processes = self.processes
        final = self.folder / step_dir_name(state.step)
        tmp = self.folder / f"{TMP_PREFIX}{final.name}"
        if processes.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        processes.barrier()
        rng_tensors, rng_meta = rng_to_files()
        save_file(rng_tensors, tmp / f"rng_{processes.rank}.safetensors")
        write_json(tmp / f"rng_{processes.rank}.json", rng_meta)
        processes.barrier()
        if processes.is_main:
            try:
                write_full_state(tmp, self.objects, state.step)
                write_json(tmp / TRAINER_FILE, state.to_json())
                write_json(tmp / RECIPE_FILE, recipe)
                write_manifest(tmp, state.step)
            except WRITE_ERRORS:  # a full disk: give the space back; the previous checkpoints are untouched
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            replace_dir(tmp, final)
            retention.write_latest(self.folder, final)
            self.prune()
        self.policy.saved(state.step)
        processes.barrier()
        return final

    def load(self, folder: Path) -> TrainState:
        """Restore every live object from `folder` (verified when the run was planned) and return the
        loop's state."""
        read_full_state(folder, self.objects)
        state = read_train_state(folder)
        rank = self.processes.rank
        if rank < state.world_size:
            rng_from_files(
                load_file(folder / f"rng_{rank}.safetensors"), json.loads((folder / f"rng_{rank}.json").read_text())
            )
        else:
            fresh_rng(state, rank)
        self.resumed_from = folder
        self.policy.saved(state.step)
        return state

    def prune(self) -> None:
        """Apply keep_last/keep_best (main process); the checkpoint this run resumed from is kept."""
        retention.prune(self.folder, self.config, protected=self.resumed_from)

    def finish(self) -> None:
        """The run is complete: keep_last applies to every checkpoint, the resumed-from one included."""
        self.resumed_from = None
        self.prune()

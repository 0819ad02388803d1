"""CheckpointManager: saves the live objects of a run atomically and restores them on resume.

Layout of `checkpoints/step_XXXXXXXX/` (see format.py for the manifest):

  model and optimizer state    full (full.py: model.safetensors, optimizer.safetensors, optimizer.json) or,
                               under fsdp, sharded (sharded.py: model/ and optimizer/ with a file per process)
  scheduler.json, scaler.json  LR scheduler and fp16 grad-scaler states
  callbacks.json           with `callbacks` in the recipe: their state_dicts (the main process's)
  rng_<rank>.safetensors   torch CPU/CUDA RNG states of process <rank>
  rng_<rank>.json          Python `random` and NumPy RNG states of process <rank>
  trainer.json             TrainState: step, data position, samples seen, validation metrics, ...
  recipe.json              the resolved recipe the state was trained with
  manifest.json            names, sizes and sha256 of every other file (written last)
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trainwright.checkpoint import retention
from trainwright.checkpoint.expected import Expected
from trainwright.checkpoint.format import (
    RECIPE_FILE,
    TMP_PREFIX,
    TRAINER_FILE,
    TrainState,
    is_sharded,
    read_train_state,
    step_dir_name,
    step_of,
    verify,
    write_manifest,
)
from trainwright.checkpoint.full import FullState, read_full_state
from trainwright.checkpoint.objects import TrainObjects, fresh_rng, rng_from_files, rng_to_files
from trainwright.checkpoint.policy import SavePolicy
from trainwright.distributed.processes import Processes
from trainwright.errors import UserError
from trainwright.recipe import CheckpointConfig
from trainwright.run.files import WRITE_ERRORS, remove_tree, replace_dir, warn, write_json


class CheckpointManager:
    """Saves, restores and prunes the checkpoints of one run dir for the live objects it was given."""

    def __init__(self, folder: Path, config: CheckpointConfig, processes: Processes, objects: TrainObjects) -> None:
        self.folder = folder
        self.config = config
        self.processes = processes
        self.objects = objects
        self.policy = SavePolicy(config)
        self.resumed_from: Path | None = None  # never pruned until this run completes
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._pending: Future[float] | None = None
        self._pending_step = 0
        # checkpoint.async: the last snapshot, kept once written so the next one copies into its buffers
        # (one copy of the model and optimizer state stays in host memory between saves).
        self._snapshot: FullState | None = None

    def should_save(self, step: int, epoch: int, **when: bool) -> bool:
        """Ask the save policy (see SavePolicy.should_save); every process gets the same answer."""
        return self.policy.should_save(step, epoch, **when)

    def next_save_due(self, step: int) -> float:
        """The first step after `step` that the step interval saves (see SavePolicy.next_due)."""
        return self.policy.next_due(step)

    def save(self, state: TrainState, recipe: dict[str, Any]) -> Path:
        """Checkpoint `state.step`; every process must call this. Training waits only for the state to be
        copied (and, under fsdp, for the shards to be written); the main process writes the rest, hashes
        every file into the manifest and renames the folder in the background (checkpoint.async) or before
        returning. Returns the checkpoint's folder (complete once `wait` returned, under checkpoint.async)."""
        processes = self.processes
        self.wait()  # one save at a time: the previous one is on disk
        final = self.folder / step_dir_name(state.step)
        tmp = self.folder / f"{TMP_PREFIX}{final.name}"
        if processes.is_main:
            remove_tree(tmp)  # a crash's leftover (or a link there: removed, never followed)
            tmp.mkdir(parents=True)
        processes.barrier()
        rng_tensors, rng_meta = rng_to_files()
        save_file(rng_tensors, tmp / f"rng_{processes.rank}.safetensors")
        write_json(tmp / f"rng_{processes.rank}.json", rng_meta)
        full = None
        if processes.strategy == "fsdp":
            _sharded().write_sharded_state(tmp, self.objects, processes)
        elif processes.is_main:
            full = FullState.take(self.objects, reuse=self._snapshot)  # the previous write is done (wait above)
            self._snapshot = full if self.config.async_ else None
        processes.barrier()  # every process's files are in tmp
        self.policy.saved(state.step)
        if processes.is_main:
            job = functools.partial(self._complete, tmp, final, full, state.to_json(), recipe)
            self._pending = self._writer.submit(job) if self.config.async_ else _done(job())
            self._pending_step = state.step
        return final

    @property
    def pending_step(self) -> int | None:
        """The step of the save being written in the background, if any."""
        return self._pending_step if self._pending is not None else None

    def wait(self) -> float | None:
        """Wait for the save being written in the background (main process) and return the seconds its
        writing took (None when none was pending); its error, if it failed, is raised here."""
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else None

    def _complete(
        self, tmp: Path, final: Path, full: FullState | None, state: dict[str, Any], recipe: dict[str, Any]
    ) -> float:
        """Write the main process's files, the manifest last, and move the folder to its final name."""
        started = time.perf_counter()
        try:
            if full is not None:
                full.write(tmp, state["step"])
            write_json(tmp / TRAINER_FILE, state)
            write_json(tmp / RECIPE_FILE, recipe)
            write_manifest(tmp, state["step"])
        except WRITE_ERRORS:  # a full disk: give the space back; the previous checkpoints are untouched
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        replace_dir(tmp, final)
        retention.write_latest(self.folder, final)
        self.prune()
        return time.perf_counter() - started

    def load(self, folder: Path, fallback: bool = True) -> TrainState:
        """Restore every live object from `folder` (verified when the run was planned) and return the loop's
        state. A checkpoint whose tensors or values do not fit the live objects (see expected.py), or whose
        weights are not finite, is damaged: with `fallback`, the next older checkpoint of this run that
        verifies is tried instead (each one skipped is named); without, or when none is left, it is refused."""
        expected = Expected.of(self.objects)
        first: tuple[Path, str] | None = None
        for candidate in self._candidates(folder, fallback):
            problem = expected.problem(candidate)
            if problem is None:
                state = self._read(candidate)
                problem = self._nonfinite_weights()
                if problem is None:
                    self.resumed_from = candidate
                    self.policy.saved(state.step)
                    return state
            first = first or (candidate, problem)
            if fallback and self.processes.is_main:
                warn(f"checkpoint {candidate} is damaged ({problem}); skipping it")
        assert first is not None  # _candidates yields `folder` first
        newest, problem = first
        if fallback:
            problem = f"no checkpoint of {self.folder} fits this run (the newest, {newest}: {problem})"
        else:
            problem = f"--resume: checkpoint {newest} cannot be used: {problem}"
        raise UserError(
            f"{problem}; resume from another checkpoint, or start over with --restart (the old run is kept)"
        )

    def _candidates(self, folder: Path, fallback: bool) -> Iterator[Path]:
        """`folder`, then (with `fallback`) the older checkpoints of this run that verify, newest first."""
        yield folder
        if not fallback or folder.parent != self.folder:
            return
        for older in reversed(retention.step_dirs(self.folder)):
            if step_of(older) >= step_of(folder):
                continue
            problem = verify(older)
            if problem is None:
                yield older
            elif self.processes.is_main:
                warn(f"checkpoint {older} is damaged ({problem}); skipping it")

    def _read(self, folder: Path) -> TrainState:
        """Load `folder` into the live objects (its tensors fit them: Expected.problem)."""
        state = read_train_state(folder)
        try:
            if is_sharded(folder):
                _sharded().read_sharded_state(folder, self.objects)
            elif self.processes.strategy == "fsdp":
                _sharded().read_full_state_sharded(folder, self.objects, self.processes)
            else:
                read_full_state(folder, self.objects)
            rank = self.processes.rank
            if rank < state.world_size:
                rng_from_files(
                    load_file(folder / f"rng_{rank}.safetensors"), json.loads((folder / f"rng_{rank}.json").read_text())
                )
            else:
                fresh_rng(state, rank)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError, OverflowError, SafetensorError) as exc:
            # well-formed files (verified when the run was planned) whose states do not fit these objects
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"checkpoint {folder} does not fit this recipe's model, optimizer or scheduler ({detail}); resume "
                "from a checkpoint of this recipe, or start over with --restart (the old run is kept)"
            ) from None
        return state

    def _nonfinite_weights(self) -> str | None:
        """Whether the loaded weights (and averages) hold NaN or infinity: each process looks at its own
        (shards), and all agree (a collective)."""
        objects = self.objects
        tensors = {**objects.model.state_dict(), **(objects.ema.tensors() if objects.ema is not None else {})}
        bad = [
            name for name, tensor in tensors.items()
            if tensor.is_floating_point() and not bool(torch.isfinite(_local(tensor)).all())
        ]
        if not int(self.processes.max(torch.tensor([len(bad)], device=self.processes.device)).item()):
            return None
        return f"its weight {bad[0]!r} holds NaN or infinite values" if bad else "its weights hold NaN or infinities"

    def prune(self) -> None:
        """Apply keep_last/keep_best (main process); the checkpoint this run resumed from is kept."""
        retention.prune(self.folder, self.config, protected=self.resumed_from)

    def finish(self) -> None:
        """The run is complete: keep_last applies to every checkpoint, the resumed-from one included."""
        self.wait()
        self.resumed_from = None
        self.prune()

    def close(self) -> None:
        """Wait for a pending save (every way out of training passes here) and stop the writer thread."""
        try:
            self.wait()
        finally:
            self._writer.shutdown(wait=True)


def _sharded() -> ModuleType:
    """checkpoint.sharded, imported only by runs that meet sharded state (torch's distributed checkpoint
    package takes about a second to import)."""
    from trainwright.checkpoint import sharded

    return sharded


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor (fsdp), or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _done(seconds: float) -> Future[float]:
    """A save written in the foreground, as a finished Future (so `wait` treats both kinds alike)."""
    future: Future[float] = Future()
    future.set_result(seconds)
    return future

"""The final weights files of a run, `model.safetensors` (and with trainer.ema `model_raw.safetensors`):
byte-identical for equal weights."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from trainwright import __version__
from trainwright.checkpoint.ties import tied_aliases, untied
from trainwright.run.files import atomic_path, write_json_atomic
from trainwright.training.ema import averaged
from trainwright.training.guards import disk_writes

if TYPE_CHECKING:
    from trainwright.checkpoint.objects import TrainObjects
    from trainwright.distributed.parallel import Strategy
    from trainwright.distributed.processes import Processes
    from trainwright.run.directory import RunDir

Weights = dict[str, torch.Tensor]


def save_weights(weights: dict[str, torch.Tensor], path: Path, metadata: dict[str, str], replace: bool = True) -> None:
    """Write a model's weights (its state dict; a tied parameter under one name, see ties.py) as safetensors,
    atomically (unless `replace`, only where nothing is: see atomic_path), with the metadata in sorted order.

    safetensors stores metadata from a hash map, so its order (and the file's bytes) would vary from
    process to process; sorting it makes equal weights give byte-identical files.
    """
    with atomic_path(path, replace) as tmp:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp), metadata=metadata)
        with os.fdopen(os.open(tmp, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC), "r+b") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
            header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
            canonical = json.dumps(header, separators=(",", ":")).encode()
            file.seek(8)
            file.write(canonical.ljust(length))  # same keys and values, so never longer than before


def save_final(
    run: RunDir, summary: dict[str, Any], objects: TrainObjects, strategy: Strategy, model: torch.nn.Module,
    processes: Processes, merge: Callable[[Weights], Weights] | None = None,
) -> None:
    """A completed run's final weights and `summary.json` (whose `recipe` and `step` go into the weights'
    metadata), written by the main process; every process calls it (the weights are gathered collectively
    under fsdp). `model.safetensors` holds the averaged weights when the run keeps an average
    (`objects.ema`), and `model_raw.safetensors` the raw ones then. `model`: as trained (wrapped);
    `merge` (a run with an adapter): its whole state dict -> the base's names and shapes."""
    average, aliases = objects.ema, tied_aliases(objects.model)
    with averaged(average):  # the averaged weights are the run's weights when trainer.ema is on
        weights = untied(strategy.full_weights(model), aliases)  # a collective under fsdp
        if average is not None:
            weights = {name: tensor.clone() for name, tensor in weights.items()}  # before the raw ones return
    raw = untied(strategy.full_weights(model), aliases) if average is not None else None
    if not processes.is_main:
        return
    if merge is not None:
        weights, raw = merge(weights), merge(raw) if raw is not None else None
    step = summary["step"]
    metadata = {"recipe": summary["recipe"], "trainwright_version": __version__, "step": str(step)}
    with disk_writes("the final weights and summary", step, run.checkpoints):
        save_weights(weights, run.model_file, metadata)
        if raw is not None:
            save_weights(raw, run.raw_model_file, {**metadata, "weights": "raw"})
        write_json_atomic(run.summary_file, summary)

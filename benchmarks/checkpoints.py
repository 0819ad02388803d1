"""The large-state case: what a checkpoint of ~442 MB (MLP 784-4096-4096-4096-10 + AdamW) costs the step.

Per interleaved repeat, three fresh processes: trainwright's epoch without checkpoints, the same epoch with
a checkpoint every `save_every` steps (and the stall/write seconds trainwright logs per save, where it
logs them), and the reference: the same state's tensors copied in memory, and written with a plain
`safetensors.torch.save_file` + fsync; then what a resume does with such a file, apart: the sha256 that
checks it against the manifest, and the load after it (the file now in the page cache)."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.measure import Context, Samples, job
from benchmarks.workloads import Workload


def reference_save(workload: Workload) -> dict[str, Any]:
    """Child job: the state of the workload's model and AdamW after one step, copied, then saved + fsynced."""
    import torch
    from safetensors.torch import save_file

    from trainwright.components import build_model, build_optimizer
    from trainwright.recipe import load_recipe
    from trainwright.run.files import sha256

    recipe = load_recipe(workload.recipe, list(workload.overrides))
    torch.manual_seed(recipe.seed)
    model = build_model(recipe)
    optimizer = build_optimizer(recipe, model)
    torch.nn.functional.cross_entropy(model(torch.rand(64, 1, 28, 28)), torch.randint(0, 10, (64,))).backward()
    optimizer.step()  # AdamW's state exists from the first step on
    tensors = {f"model.{name}": value for name, value in model.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        tensors.update({f"optimizer.{index}.{name}": value for name, value in state.items() if torch.is_tensor(value)})

    started = time.perf_counter()
    copies = {name: value.clone() for name, value in tensors.items()}
    copy_seconds = time.perf_counter() - started
    del copies
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.safetensors"
        started = time.perf_counter()
        save_file(tensors, path)
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        save_seconds = time.perf_counter() - started
        verify_seconds, load_seconds = _resume_passes(path, sha256)
    state_mb = sum(value.nbytes for value in tensors.values()) / 1e6
    return {"copy_seconds": copy_seconds, "save_seconds": save_seconds, "state_mb": state_mb,
            "verify_seconds": verify_seconds, "load_seconds": load_seconds}


def _resume_passes(path: Path, sha256: Any) -> tuple[float, float]:
    """Seconds of a resume's two passes over a checkpoint file: the sha256 (trainwright.run.files.sha256, as its
    manifest check runs), then safetensors' load_file with every tensor read once (a sum of each)."""
    from safetensors.torch import load_file

    started = time.perf_counter()
    sha256(path)
    verify_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for tensor in load_file(path).values():
        tensor.sum()
    return verify_seconds, time.perf_counter() - started


@dataclass
class LargeState:
    epoch_plain: Samples = field(default_factory=Samples)
    epoch_with_saves: Samples = field(default_factory=Samples)
    first_stall: Samples = field(default_factory=Samples)  # checkpoint/stall_seconds of a run's first save
    stall: Samples = field(default_factory=Samples)  # ... of its later saves (into the reused snapshot buffers)
    write: Samples = field(default_factory=Samples)  # checkpoint/write_seconds of every save, where logged
    sync_stall: Samples = field(default_factory=Samples)  # checkpoint/stall_seconds with checkpoint.async=false
    copy: Samples = field(default_factory=Samples)
    save: Samples = field(default_factory=Samples)
    verify: Samples = field(default_factory=Samples)  # a resume's sha256 of the saved state
    load: Samples = field(default_factory=Samples)  # ... and its load after that
    state_mb: float = 0.0

    def cost_per_save(self, saves_in_epoch: int) -> float:
        """From outside: how much longer the epoch took per checkpoint inside it (medians)."""
        return (self.epoch_with_saves.median - self.epoch_plain.median) / saves_in_epoch


def measure_large_state(context: Context, repeats: int) -> LargeState:
    result = LargeState()
    for _ in range(repeats):
        result.epoch_plain.values.append(job("trainwright", "large", context)["seconds"])
        saved = job("trainwright", "large-saves", context)
        result.epoch_with_saves.values.append(saved["seconds"])
        result.first_stall.values += saved["stall_seconds"][:1]
        result.stall.values += saved["stall_seconds"][1:]
        result.write.values += saved["write_seconds"]
        result.sync_stall.values += job("trainwright", "large-saves-sync", context)["stall_seconds"]
        reference = job("reference-save", "large", context)
        result.copy.values.append(reference["copy_seconds"])
        result.save.values.append(reference["save_seconds"])
        result.verify.values.append(reference["verify_seconds"])
        result.load.values.append(reference["load_seconds"])
        result.state_mb = reference["state_mb"]
    return result

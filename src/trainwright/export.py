"""`trainwright export`: the whole model's weights of any checkpoint, full or sharded, as one safetensors
file, in one CPU process (no launcher, no process group). Also finds and reads the checkpoint for
`predict --checkpoint`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from trainwright.checkpoint import retention
from trainwright.checkpoint.format import MANIFEST, read_train_state, verify
from trainwright.checkpoint.weights import save_weights
from trainwright.errors import UserError
from trainwright.files import check_new_output, warn
from trainwright.rundir import RunDir


@dataclass(frozen=True)
class Exported:
    checkpoint: Path
    step: int
    tensors: int
    parameters: int


def export_weights(source: str | Path, out: str | Path) -> Exported:
    """Write the model weights of `source` (a checkpoint folder, or a run dir: its newest valid checkpoint)
    to `out`, which must not exist yet."""
    out = Path(out)
    check_new_output(out, "--out")
    checkpoint = find_checkpoint(Path(source))
    weights = checkpoint_weights(checkpoint)
    step = read_train_state(checkpoint).step
    save_weights(weights, out, {"step": str(step), "exported_from": str(checkpoint)})
    return Exported(checkpoint, step, len(weights), sum(t.numel() for t in weights.values()))


def checkpoint_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The whole model's weights of a verified checkpoint, full or sharded."""
    from trainwright.checkpoint.sharded import consolidated_weights  # torch's DCP: a second to import

    return consolidated_weights(folder)


def find_checkpoint(source: Path) -> Path:
    """`source` if it is a checkpoint folder, else the newest valid checkpoint of the run dir `source`."""
    if not source.is_dir():
        raise UserError(f"{source} is not a checkpoint folder or a run dir")
    if (source / MANIFEST).is_file():
        problem = verify(source)
        if problem is not None:
            raise UserError(f"checkpoint {source} cannot be used: {problem}")
        return source
    choice = retention.newest_valid(RunDir(source).checkpoints)
    for folder, problem in choice.damaged:
        warn(f"checkpoint {folder} is damaged ({problem}); skipping it")
    if choice.folder is None:
        raise UserError(f"{source} holds no valid checkpoint (a run dir's checkpoints/ or a checkpoint folder)")
    return choice.folder

"""`trainwright export`: the whole model's weights of any checkpoint, full or sharded, as one safetensors
file, in one CPU process (no launcher, no process group)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainwright.checkpoint import retention
from trainwright.checkpoint.format import MANIFEST, read_train_state, verify
from trainwright.checkpoint.sharded import consolidated_weights
from trainwright.checkpoint.weights import save_weights
from trainwright.errors import UserError
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
    if out.exists():
        raise UserError(f"--out {out} exists; trainwright does not overwrite it (choose another name or remove it)")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    checkpoint = _checkpoint(Path(source))
    weights = consolidated_weights(checkpoint)
    step = read_train_state(checkpoint).step
    save_weights(weights, out, {"step": str(step), "exported_from": str(checkpoint)})
    return Exported(checkpoint, step, len(weights), sum(t.numel() for t in weights.values()))


def _checkpoint(source: Path) -> Path:
    if not source.is_dir():
        raise UserError(f"{source} is not a checkpoint folder or a run dir")
    if (source / MANIFEST).is_file():
        problem = verify(source)
        if problem is not None:
            raise UserError(f"checkpoint {source} cannot be used: {problem}")
        return source
    choice = retention.newest_valid(RunDir(source).checkpoints)
    if choice.folder is None:
        raise UserError(f"{source} holds no valid checkpoint (a run dir's checkpoints/ or a checkpoint folder)")
    return choice.folder

"""Guards the training loop calls: a non-finite loss stops the run before anything broken is saved,
and a write that fails (a full disk) is one message saying what is kept."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

from trainwright.checkpoint.retention import step_dirs
from trainwright.errors import NonFiniteLoss, UserError
from trainwright.run.files import WRITE_ERRORS


def kept(checkpoints: Path) -> str:
    """Which checkpoint a run that stops here keeps (its newest), as a clause of a message."""
    folders = step_dirs(checkpoints)
    return f"its newest checkpoint, {folders[-1]}, is kept" if folders else "it has no checkpoint yet"


def require_finite(value: float, what: str, step: int, checkpoints: Path) -> None:
    """Stop (NonFiniteLoss, exit code 3) when `value` is NaN or infinite: nothing is saved from here on."""
    if math.isfinite(value):
        return
    raise NonFiniteLoss(
        f"the {what} became {value} by step {step}: training stopped without saving this state; {kept(checkpoints)}. "
        "Lower optimizer.lr, set trainer.grad_clip, or check the data, then start over with --restart (the "
        "stopped run is kept) or go on from an earlier checkpoint with --resume"
    )


@contextlib.contextmanager
def disk_writes(what: str, step: int, checkpoints: Path) -> Iterator[None]:
    """Turn a failed write (no space left, a read-only disk) into one message naming what is kept."""
    try:
        yield
    except WRITE_ERRORS as exc:
        reason = getattr(exc, "strerror", None) or exc
        filename = getattr(exc, "filename", None)
        where = f" ({filename})" if filename else ""
        raise UserError(
            f"cannot write {what} at step {step}: {reason}{where}; {kept(checkpoints)}. "
            "Free space (or fix the disk) and run the same command to go on from there"
        ) from None

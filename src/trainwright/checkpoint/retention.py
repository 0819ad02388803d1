"""Which checkpoints a run dir holds, which one to resume from, and which ones to keep."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from trainwright.checkpoint.format import TMP_PREFIX, TRAINER_FILE, is_step_dir, step_of, verify
from trainwright.recipe import CheckpointConfig
from trainwright.run.files import is_temporary, write_json_atomic

LATEST = "latest.json"
BEST = "best.json"


def step_dirs(folder: Path) -> list[Path]:
    """Finished checkpoint folders under `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if is_step_dir(p)), key=step_of)


@dataclass(frozen=True)
class Choice:
    """The newest checkpoint that verifies (None: there is none), and the newer ones that did not."""

    folder: Path | None
    damaged: list[tuple[Path, str]]


def newest_valid(folder: Path) -> Choice:
    """Verify checkpoints from the newest down and take the first whose files match its manifest."""
    damaged: list[tuple[Path, str]] = []
    for candidate in reversed(step_dirs(folder)):
        problem = verify(candidate)
        if problem is None:
            return Choice(candidate, damaged)
        damaged.append((candidate, problem))
    return Choice(None, damaged)


def remove_unfinished(folder: Path) -> None:
    """Delete what saves killed before they finished left behind (it is never a complete checkpoint)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name.startswith(TMP_PREFIX) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(TMP_PREFIX) or is_temporary(path.name):
            path.unlink()


def write_latest(folder: Path, checkpoint: Path) -> None:
    write_json_atomic(folder / LATEST, {"step": step_of(checkpoint), "path": checkpoint.name})


def prune(folder: Path, config: CheckpointConfig, protected: Path | None) -> None:
    """Keep the newest `keep_last` checkpoints, the `keep_best` best by `monitor` and `protected`; delete
    the rest (so disk use stays bounded however often a run is requeued). Writes best.json."""
    folders = step_dirs(folder)
    keep = set(folders[-config.keep_last :]) | {protected}
    if config.keep_best:
        scored = [(score, f) for f in folders if (score := _score(f, config.monitor)) is not None]
        scored.sort(key=lambda item: item[0], reverse=config.mode == "max")
        best = [f for _, f in scored[: config.keep_best]]
        keep.update(best)
        if best:
            write_json_atomic(folder / BEST, {"path": best[0].name, config.monitor: scored[0][0]})
    for candidate in folders:
        if candidate not in keep:
            shutil.rmtree(candidate, ignore_errors=True)


def _score(checkpoint: Path, monitor: str) -> float | None:
    """The monitored metric measured at this checkpoint's own step, if any."""
    try:
        state = json.loads((checkpoint / TRAINER_FILE).read_text())
    except (OSError, ValueError, RecursionError):  # a damaged checkpoint's (verify says so when it is read)
        return None
    if state.get("val_step") != state.get("step"):
        return None
    return state.get("val_metrics", {}).get(monitor)

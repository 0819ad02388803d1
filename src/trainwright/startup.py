"""Starting a run in its run dir: refuse foreign folders, honour --restart and --resume, and pick and vet
the checkpoint to resume from. Nothing a user saved is lost: a foreign folder is refused, --restart
renames the old run, and a recipe that changes the meaning of the saved work is refused before anything
is written."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from trainwright.checkpoint import CheckpointManager, TrainState, step_of, verify
from trainwright.errors import UserError
from trainwright.recipe import Recipe, recipe_changes
from trainwright.rundir import RunDir


def prepare_run_dir(
    run: RunDir,
    recipe: Recipe,
    checkpoints: CheckpointManager,
    is_main: bool,
    barrier: Callable[[], None],
    resume: str | Path | None,
    restart: bool,
) -> Path | None:
    """Get the run dir ready on every process; return the checkpoint to resume from (None: start fresh)."""
    if run.is_foreign():
        raise UserError(
            f"{run.path} exists and is not a trainwright run dir; choose another --run-dir "
            "(trainwright never writes into a folder it did not make)"
        )
    if is_main:
        if restart and run.holds_run():
            print(f"--restart: the previous run was moved to {run.set_aside()}", flush=True)
        checkpoints.remove_unfinished()
    barrier()
    folder = explicit_checkpoint(resume) if resume is not None else checkpoints.newest_valid()
    if folder is not None:
        check_recipe_changes(folder, recipe, is_main)
    if is_main:
        if resume is not None:
            set_aside_newer_checkpoints(run, checkpoints, folder)
        run.write_recipe(recipe)
    barrier()
    return folder


def explicit_checkpoint(resume: str | Path) -> Path:
    """The checkpoint named by --resume, verified."""
    folder = Path(resume)
    if not folder.is_dir():
        raise UserError(f"--resume: checkpoint folder not found: {folder}")
    problem = verify(folder)
    if problem is not None:
        raise UserError(f"--resume: checkpoint {folder} cannot be used: {problem}")
    return folder


def check_recipe_changes(folder: Path, recipe: Recipe, is_main: bool) -> None:
    """List recipe keys changed since the checkpoint; refuse those that change the work done."""
    saved = json.loads((folder / "recipe.json").read_text())
    allowed, refused = recipe_changes(saved, recipe.to_dict())
    if refused:
        raise UserError(
            f"the recipe changed since checkpoint {folder} in ways that change the work already done:\n  "
            + "\n  ".join(refused)
            + "\nResume with the original values, or start over with --restart (the old run is kept)."
        )
    if allowed and is_main:
        print("Recipe changed since the checkpoint (allowed): " + "; ".join(allowed), flush=True)


def set_aside_newer_checkpoints(run: RunDir, checkpoints: CheckpointManager, folder: Path) -> None:
    """Checkpoints after the one chosen with --resume belong to an abandoned path: move them aside."""
    step = TrainState.from_json(json.loads((folder / "trainer.json").read_text())).step
    newer = [p for p in checkpoints.step_dirs() if step_of(p) > step]
    if newer:
        target = run.path / f"superseded-{time.strftime('%Y%m%d-%H%M%S')}"
        target.mkdir()
        for path in newer:
            path.rename(target / path.name)
        print(f"--resume: {len(newer)} later checkpoint(s) moved to {target}", flush=True)

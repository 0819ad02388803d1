"""What `train` does in a run dir, decided once from its files before anything is built or written:
start fresh, resume from a checkpoint, or nothing (the run is already complete). Then the plan is
applied on the main process. Nothing a user saved is lost: a foreign folder is refused, --restart
renames the old run, and a recipe that changes the meaning of the saved work is refused.

Deciding reads files only (no torch), so every process of a launch reaches the same plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from trainwright.checkpoint import retention
from trainwright.checkpoint.format import RECIPE_FILE, read_recipe, read_train_state, step_of, verify
from trainwright.data.paths import path_keys
from trainwright.distributed.launcher import resolve_precision
from trainwright.errors import UserError
from trainwright.recipe import Recipe
from trainwright.run.directory import DamagedFile, RunDir
from trainwright.run.files import warn, write_json_atomic

if TYPE_CHECKING:
    from trainwright.distributed.processes import Processes


# Keys a resumed run may change: they do not alter the meaning of the work already done.
# trainer.mixed_precision may read differently (auto, or the value auto gave) if the precision stays the same.
RESUMABLE_CHANGES = (
    "name", "trainer.epochs", "trainer.max_steps", "trainer.log_every_steps", "trainer.eval_every_epochs",
    "trainer.eval_every_steps", "trainer.test_at_end",
    "trainer.record_samples", "trainer.mixed_precision", "trainer.deterministic", "trainer.profile", "data.num_workers",
    "data.prefetch_factor",
    "metrics",
    "checkpoint.",
    "logging.", "distributed.",
)


@dataclass(frozen=True)
class RunPlan:
    """The decision for one `train` command in one run dir."""

    run: RunDir
    resume_from: Path | None = None  # the checkpoint to resume from (verified); None: start fresh
    completed: dict[str, Any] | None = None  # summary.json of a run with nothing left to do
    restart: bool = False  # move the existing run aside first (--restart)
    explicit: bool = False  # --resume: checkpoints after resume_from are moved aside
    damaged: list[tuple[Path, str]] = field(default_factory=list)  # newer checkpoints that failed verification
    allowed_changes: list[str] = field(default_factory=list)  # recipe keys changed in ways a resume allows
    notes: list[str] = field(default_factory=list)  # run files found damaged or missing, and what is done about it
    allow_data_change: bool = False  # --allow-data-change: resume even if the data differ from data.json

    def announce(self) -> None:
        """Tell the user what was found (main process)."""
        for note in self.notes:
            warn(note)
        for folder, problem in self.damaged:
            warn(f"checkpoint {folder} is damaged ({problem}); skipping it")
        if self.allowed_changes:
            print("Recipe changed since the checkpoint (allowed): " + "; ".join(self.allowed_changes), flush=True)


def plan_run(
    run: RunDir, recipe: Recipe, resume: str | Path | None = None, restart: bool = False,
    allow_data_change: bool = False,
) -> RunPlan:
    """Decide what to do; raises UserError for a folder or a recipe change that must not be used."""
    if run.is_foreign():
        raise UserError(
            f"{run.path} exists and is not a trainwright run dir; choose another --run-dir "
            "(trainwright never writes into a folder it did not make)"
        )
    if restart and resume is not None:
        raise UserError("--restart starts over and --resume continues a checkpoint: give one of them")
    run.check_location(restart)
    if restart:
        return RunPlan(run, restart=run.holds_run())
    if resume is not None:
        folder = _explicit_checkpoint(resume)
        return RunPlan(
            run, resume_from=folder, explicit=True, allowed_changes=_changes_since(folder, recipe),
            allow_data_change=allow_data_change,
        )
    notes: list[str] = []
    summary = completed_run_summary(run, notes)
    if summary is not None:
        try:
            if run.saved_recipe_is(recipe):
                return RunPlan(run, completed=summary)
            if _reaches_total(summary, recipe):
                allowed = _allowed_changes(run.saved_recipe(), recipe, f"the run in {run.path}")
                total = recipe.trainer.total_steps(summary["steps_per_epoch"])
                if summary["step"] > total:
                    notes.append(
                        f"the run already trained {summary['step']} steps, more than the {total} this recipe asks for; "
                        f"nothing is trained or rewritten, and its weights and {run.recipe_file.name} stay those of "
                        f"the {summary['step']}-step run"
                    )
                return RunPlan(run, completed=summary, allowed_changes=allowed, notes=notes)
        except DamagedFile as exc:
            notes.append(f"{exc}; it is written again from the checkpoint")
    choice = retention.newest_valid(run.checkpoints)
    if choice.folder is None:
        return RunPlan(run, damaged=choice.damaged, notes=notes)
    return RunPlan(
        run, resume_from=choice.folder, damaged=choice.damaged, allowed_changes=_changes_since(choice.folder, recipe),
        notes=notes, allow_data_change=allow_data_change,
    )


def completed_run_summary(run: RunDir, notes: list[str]) -> dict[str, Any] | None:
    """summary.json of a completed run whose final weights are there; a damaged summary or missing
    weights are noted, and the run goes on from its newest checkpoint, which writes them again."""
    try:
        summary = run.completed_summary()
    except DamagedFile as exc:
        notes.append(f"{exc}; the run goes on from its newest checkpoint, which writes it again")
        return None
    if summary is not None and not run.model_is_intact():
        state = "damaged" if run.model_file.exists() else "missing"
        notes.append(f"{run.model_file} is {state}; writing it again from the newest checkpoint")
        return None
    return summary


def apply_plan(plan: RunPlan, recipe: Recipe, processes: Processes, data_record: dict[str, Any]) -> None:
    """Get the run dir ready (main process: set aside, clean up, write the recipe and data record);
    every process calls it."""
    run = plan.run
    if processes.is_main:
        if plan.restart:
            print(f"--restart: the previous run was moved to {run.set_aside()}", flush=True)
        run.create()
        retention.remove_unfinished(run.checkpoints)
        if plan.explicit and plan.resume_from is not None:  # (an explicit plan names its checkpoint)
            _set_aside_newer_checkpoints(run, plan.resume_from)
        run.write_recipe(recipe)
        write_json_atomic(run.data_file, data_record)
        run.summary_file.unlink(missing_ok=True)  # written again when this run completes
    processes.barrier()


def _reaches_total(summary: dict[str, Any], recipe: Recipe) -> bool:
    """Whether a completed run already trained as many steps as `recipe` asks for, or stopped early or by a
    callback (more epochs would not change that: the run ended before its last step)."""
    if summary.get("stopped_early") or summary.get("stopped_by_callback"):
        return True
    steps_per_epoch = summary.get("steps_per_epoch")
    if not steps_per_epoch:
        return False
    return summary["step"] >= recipe.trainer.total_steps(steps_per_epoch)


def _explicit_checkpoint(resume: str | Path) -> Path:
    """The checkpoint named by --resume, verified."""
    folder = Path(resume)
    if not folder.is_dir():
        raise UserError(f"--resume: checkpoint folder not found: {folder}")
    if RunDir(folder).holds_run() or (folder / "checkpoints").is_dir():
        raise UserError(_run_dir_given(folder))
    problem = verify(folder)
    if problem is not None:
        raise UserError(f"--resume: checkpoint {folder} cannot be used: {problem}")
    return folder


def _run_dir_given(folder: Path) -> str:
    """--resume was given a run dir: say how to go on with it."""
    newest = retention.newest_valid(RunDir(folder).checkpoints).folder
    name = newest.name if newest else "step_XXXXXXXX"
    return (
        f"--resume: {folder} is a run dir, not a checkpoint. To go on from its newest valid checkpoint, run the "
        f"same command with --run-dir {folder} and without --resume; to go on from a chosen checkpoint, give its "
        f"folder, e.g. --resume {folder / 'checkpoints' / name}"
    )


def _changes_since(folder: Path, recipe: Recipe) -> list[str]:
    """Recipe keys changed since the checkpoint that a resume allows; refused changes raise."""
    state = read_train_state(folder)
    precision = resolve_precision(recipe)
    if state.precision and state.precision != precision:
        raise UserError(
            f"checkpoint {folder} was trained with mixed precision '{state.precision}', and this command would "
            f"go on in '{precision}' (trainer.mixed_precision={recipe.trainer.mixed_precision}); resume with "
            f"the same precision, or start over with --restart (the old run is kept)"
        )
    if state.recipe_digest == recipe.digest():
        return []
    saved = read_recipe(folder)
    allowed = _allowed_changes(saved, recipe, f"checkpoint {folder}")
    _check_schedule_length(saved, recipe, state.steps_per_epoch, folder)
    return allowed


# Schedulers whose learning rate does not depend on the run's planned length (torch's classes by name, but
# OneCycleLR, take no length: optim.py).
_LENGTH_FREE_SCHEDULERS = (
    "none", "step", "constant", "ConstantLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "CyclicLR",
    "ExponentialLR", "LinearLR", "MultiStepLR", "PolynomialLR", "StepLR",
)


def _check_schedule_length(saved: dict[str, Any], recipe: Recipe, steps_per_epoch: int, folder: Path) -> None:
    """A scheduler laid out over the run's total steps (cosine; imported ones get total_steps too) cannot
    follow a change of that total: its state holds the old length, and the LR would climb back from the
    end of the old curve."""
    if not steps_per_epoch or recipe.scheduler.name in _LENGTH_FREE_SCHEDULERS:
        return
    try:
        before = Recipe.model_validate(saved).trainer.total_steps(steps_per_epoch)
    except ValidationError as exc:
        raise UserError(
            f"checkpoint {folder}: its {RECIPE_FILE} is not a recipe this trainwright reads ({exc.errors()[0]['msg']} "
            f"at {'.'.join(map(str, exc.errors()[0]['loc']))}); resume from another checkpoint, "
            "or start over with --restart"
        ) from None
    after = recipe.trainer.total_steps(steps_per_epoch)
    if before != after:
        raise UserError(
            f"checkpoint {folder} was trained with scheduler '{recipe.scheduler.name}' laid out over {before} steps; "
            f"trainer.epochs/max_steps now make {after}, which that schedule cannot follow (its learning rate "
            "would restart from the end of its curve). Keep the run's length, or start over with --restart "
            "(the old run is kept)."
        )


def _allowed_changes(saved: dict[str, Any], recipe: Recipe, since: str) -> list[str]:
    allowed, refused = recipe_changes(saved, recipe.to_dict(), tuple(path_keys(recipe)))
    if refused:
        raise UserError(
            f"the recipe changed since {since} in ways that change the work already done:\n  "
            + "\n  ".join(refused)
            + "\nResume with the original values, or start over with --restart (the old run is kept)."
        )
    return allowed


def _set_aside_newer_checkpoints(run: RunDir, folder: Path) -> None:
    """Checkpoints after the one chosen with --resume belong to an abandoned path: move them aside."""
    step = read_train_state(folder).step
    newer = [p for p in retention.step_dirs(run.checkpoints) if step_of(p) > step]
    if newer:
        target = run.superseded_folder()
        for path in newer:
            path.rename(target / path.name)
        print(f"--resume: {len(newer)} later checkpoint(s) moved to {target}", flush=True)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def recipe_changes(
    old: dict[str, Any], new: dict[str, Any], also_allowed: tuple[str, ...] = ()
) -> tuple[list[str], list[str]]:
    """Keys that differ between two resolved recipes, as (allowed on resume, refused on resume);
    `also_allowed`: further keys a resume may change (the data paths: the data's fingerprint decides)."""
    changes = describe_changes(old, new)
    allowed = [d for k, d in changes.items() if k.startswith(RESUMABLE_CHANGES) or k in also_allowed]
    return allowed, [d for d in changes.values() if d not in allowed]


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, str]:
    """Each key that differs between two resolved recipes, in order: 'key (old -> new)'."""
    before, after = flatten(old), flatten(new)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return {k: f"{k} ({before.get(k)!r} -> {after.get(k)!r})" for k in changed}

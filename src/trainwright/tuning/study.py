"""The folder of a CV or a sweep: its spec (what was asked for) and the resolved recipe its runs train
are written on the first run, and a later command in the same folder must ask for the same, so runs of
different studies or recipes are never mixed. One command at a time works in a folder (its lock)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from trainwright.data.paths import pin_paths
from trainwright.errors import UserError
from trainwright.recipe import Recipe
from trainwright.run.directory import RunDir
from trainwright.run.files import write_json_atomic
from trainwright.run.lock import RunLock
from trainwright.run.plan import describe_changes

RECIPE_KEY = "resolved_recipe"  # in the spec file: the recipe of every run, before the study's own settings
RECORDED_AS_GIVEN = ("recipe", "overrides")  # how the recipe was given: its resolved form is what is compared

# Recipe keys that may change between commands of one study: they change neither a run's weights nor its
# metrics, so the runs trained before and after still compare. Every other change is refused.
STUDY_RESUMABLE = ("name", "trainer.log_every_steps", "trainer.record_samples", "data.num_workers", "checkpoint.",
                   "logging.")


def lock(folder: Path) -> RunLock:
    """The study folder's lock (`.<name>.trainwright-lock` beside it, as a run dir's), held for the whole
    command: a second command on the same folder is refused while the first runs."""
    return RunLock(RunDir(folder))


def claim(folder: Path, spec_file: str, spec: dict[str, Any], command: str, recipe: Recipe,
          set_per_run: tuple[str, ...] = ()) -> None:
    """Create `folder` with `spec_file` (the spec and the resolved `recipe`), or check that the one there
    holds the same spec and a recipe that differs at most in STUDY_RESUMABLE keys and in `set_per_run`
    (keys the study itself sets for each run from its spec: the fold). A swept key's value in the recipe
    is compared too (every trial overrides it, but an edit of it is refused like any other)."""
    path = folder / spec_file
    record = json.loads(json.dumps({**spec, RECIPE_KEY: pin_paths(recipe).to_dict()}))  # as it reads back
    if path.is_file():
        saved = json.loads(path.read_text())
        legacy = RECIPE_KEY not in saved  # written before the resolved recipe was: compare as it was then
        compared = () if legacy else (*RECORDED_AS_GIVEN, RECIPE_KEY)
        before = {k: v for k, v in saved.items() if k not in compared}
        now = {k: v for k, v in record.items() if k not in (*compared, RECIPE_KEY)}
        if before != now:
            raise UserError(
                f"{folder} holds a {command} with other settings ({path}):\n  before: {_short(before)}\n  now:    "
                f"{_short(now)}\nrun the same command as before to go on, or choose another --run-dir"
            )
        if not legacy:
            _check_recipe(saved[RECIPE_KEY], record[RECIPE_KEY], set_per_run, f"the {command} in {folder}")
        if saved != record:  # the recipe as given now, with the allowed changes
            write_json_atomic(path, record)
        return
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"--run-dir {folder} exists and is not a {command} folder (no {spec_file}); choose another")
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)


def _check_recipe(saved: dict[str, Any], resolved: dict[str, Any], set_per_run: tuple[str, ...], study: str) -> None:
    """Refuse a recipe that changed since `study` started in keys that change its runs; say the others."""
    changes = {
        key: text for key, text in describe_changes(saved, resolved).items()
        if not any(key == k or key.startswith(k + ".") for k in set_per_run)
    }
    refused = [text for key, text in changes.items() if not key.startswith(STUDY_RESUMABLE)]
    if refused:
        raise UserError(
            f"the recipe changed since {study} started, in ways that change its runs (those already trained used "
            "the old values):\n  " + "\n  ".join(refused) + "\nRun it with the recipe as it was, or give the "
            f"changed recipe another --run-dir ({study} is kept)"
        )
    if changes:
        print(f"Recipe changed since {study} started (allowed): " + "; ".join(changes.values()), flush=True)


def _short(spec: dict[str, Any]) -> str:
    return yaml.safe_dump(spec, default_flow_style=True, width=10_000).strip()


def run_labels(recipe: Recipe, name: str, folder: Path, tags: list[str]) -> list[str]:
    """Overrides that name one run of a study (`name`: the recipe's name, a dash and the run's own part) and,
    with W&B on, put it in the study's W&B group with `tags`; a W&B run name the recipe sets gets the run's part."""
    labels = [f"name={name}"]
    wandb = recipe.logging.wandb
    if wandb.mode != "disabled":
        labels += [f"logging.wandb.group={folder.name}", f"logging.wandb.tags={[*wandb.tags, *tags]}"]
        if wandb.name is not None:
            labels.append(f"logging.wandb.name={json.dumps(wandb.name + name.removeprefix(recipe.name))}")
    return labels


def final_metrics(summary: dict[str, Any] | None) -> dict[str, float]:
    """The val/ metrics of a completed run's summary ({} when it has none)."""
    return {k: v for k, v in (summary or {}).items() if k.startswith("val/") and isinstance(v, (int, float))}


def format_table(rows: list[list[str]], align: str) -> str:
    """Rows of cells (the header first) as text: each column as wide as its widest cell, two spaces
    apart, aligned as `align` says per column ('l' left, 'r' right)."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(align))]
    lines = ("  ".join(cell.ljust(width) if side == "l" else cell.rjust(width)
                       for cell, width, side in zip(row, widths, align)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)

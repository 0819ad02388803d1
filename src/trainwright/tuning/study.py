"""The folder of a CV or a sweep: its spec (what was asked for) is written on the first run, and a later
command in the same folder must ask for the same, so runs of different studies are never mixed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from trainwright.errors import UserError
from trainwright.files import write_json_atomic
from trainwright.recipe import Recipe


def claim(folder: Path, spec_file: str, spec: dict[str, Any], command: str) -> None:
    """Create `folder` with `spec_file`, or check that the one there holds the same spec."""
    path = folder / spec_file
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != json.loads(json.dumps(spec)):
            raise UserError(
                f"{folder} holds a {command} with other settings ({path}):\n  before: {_short(saved)}\n  now:    "
                f"{_short(spec)}\nrun the same command as before to go on, or choose another --run-dir"
            )
        return
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"--run-dir {folder} exists and is not a {command} folder (no {spec_file}); choose another")
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, spec)


def _short(spec: dict[str, Any]) -> str:
    return yaml.safe_dump(spec, default_flow_style=True, width=10_000).strip()


def run_labels(recipe: Recipe, name: str, folder: Path, tags: list[str]) -> list[str]:
    """Overrides that name one run of a study and, with W&B on, put it in the study's W&B group with `tags`."""
    labels = [f"name={name}"]
    if recipe.logging.wandb.mode != "disabled":
        labels += [f"logging.wandb.group={folder.name}", f"logging.wandb.tags={[*recipe.logging.wandb.tags, *tags]}"]
    return labels


def final_metrics(summary: dict[str, Any] | None) -> dict[str, float]:
    """The val/ metrics of a completed run's summary ({} when it has none)."""
    return {k: v for k, v in (summary or {}).items() if k.startswith("val/") and isinstance(v, (int, float))}

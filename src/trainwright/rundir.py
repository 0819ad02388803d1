"""The run directory: where a run's recipe, metrics, checkpoints, weights and plots live."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import yaml

from trainwright.errors import UserError
from trainwright.recipe import Recipe, read_yaml, validate


class RunDir:
    """Paths inside one run dir, and the few questions asked of it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.recipe_file = self.path / "recipe.yaml"
        self.metrics_file = self.path / "metrics.jsonl"
        self.summary_file = self.path / "summary.json"
        self.model_file = self.path / "model.safetensors"
        self.checkpoints = self.path / "checkpoints"
        self.plots = self.path / "plots"
        self.wandb_id_file = self.path / "wandb_run_id.txt"

    @classmethod
    def existing(cls, path: str | Path) -> RunDir:
        """A run dir that must already hold a run (for eval, predict, plot)."""
        run = cls(path)
        if not run.path.is_dir():
            raise UserError(f"run dir not found: {run.path}")
        if not run.recipe_file.is_file():
            raise UserError(
                f"{run.path} is not a trainwright run dir (it has no recipe.yaml); "
                "give the folder a `trainwright train ... --run-dir DIR` wrote"
            )
        return run

    def holds_run(self) -> bool:
        return self.recipe_file.is_file()

    def is_foreign(self) -> bool:
        """True when the folder exists, is not empty and is not a run: training there could clobber files."""
        return self.path.exists() and (not self.path.is_dir() or (any(self.path.iterdir()) and not self.holds_run()))

    def recipe(self) -> Recipe:
        return validate(read_yaml(self.recipe_file), str(self.recipe_file))

    def write_recipe(self, recipe: Recipe) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.recipe_file.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        tmp.replace(self.recipe_file)

    def summary(self) -> dict[str, Any] | None:
        if not self.summary_file.is_file():
            return None
        return json.loads(self.summary_file.read_text())

    def completed_summary(self) -> dict[str, Any] | None:
        """summary.json of a run that completed, else None."""
        summary = self.summary()
        return summary if summary and summary.get("status") == "completed" else None

    def completed_with(self, recipe: Recipe) -> dict[str, Any] | None:
        """The summary if this run completed with exactly `recipe` (nothing left to do), else None.

        Answered from the files alone, before torch, data or model are touched."""
        summary = self.completed_summary()
        if summary is None or not self.recipe_file.is_file():
            return None
        return summary if yaml.safe_load(self.recipe_file.read_text()) == recipe.to_dict() else None

    def require_model(self) -> Path:
        if not self.model_file.is_file():
            raise UserError(f"{self.path} has no model.safetensors yet: the run has not finished training")
        return self.model_file

    def wandb_run_id(self) -> str:
        """The W&B run id of this run dir, made on first use, so a resumed run continues the same W&B run."""
        if self.wandb_id_file.is_file():
            return self.wandb_id_file.read_text().strip()
        run_id = secrets.token_hex(6)
        self.wandb_id_file.write_text(run_id + "\n")
        return run_id

    def set_aside(self) -> Path:
        """Rename the whole run dir to '<name>.old-<time>' (used by --restart; nothing is deleted)."""
        target = self.path.with_name(f"{self.path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        self.path.rename(target)
        return target

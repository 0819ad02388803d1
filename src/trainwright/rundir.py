"""The run directory: the one place that knows where a run's files live.

  recipe.yaml          the resolved recipe
  metrics.jsonl        one JSON object per log event
  summary.json         written when the run completes
  model.safetensors    final weights
  checkpoints/         step_XXXXXXXX/ folders, latest.json, best.json
  plots/               loss_curves.png, predictions.png
  wandb/               W&B files; wandb_run_id.txt: the W&B run id, kept across restarts
  tensorboard/         TensorBoard event files
  samples/             rank<R>.jsonl: the sample indices each process trained on
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import yaml

from trainwright.errors import UserError
from trainwright.files import write_text_atomic
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
        self.loss_curves = self.plots / "loss_curves.png"
        self.predictions_plot = self.plots / "predictions.png"
        self.wandb = self.path / "wandb"  # W&B makes it: its `dir` is the run dir
        self.wandb_id_file = self.path / "wandb_run_id.txt"
        self.tensorboard = self.path / "tensorboard"
        self.samples = self.path / "samples"

    def sample_file(self, rank: int) -> Path:
        return self.samples / f"rank{rank}.jsonl"

    def sample_files(self) -> dict[int, Path]:
        """rank -> the sample log of every process that ever trained this run."""
        return {int(path.stem[4:]): path for path in self.samples.glob("rank*.jsonl")}

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
        write_text_atomic(self.recipe_file, yaml.safe_dump(recipe.to_dict(), sort_keys=False))

    def completed_summary(self) -> dict[str, Any] | None:
        """summary.json of a run that completed, else None."""
        if not self.summary_file.is_file():
            return None
        summary = json.loads(self.summary_file.read_text())
        return summary if summary.get("status") == "completed" else None

    def saved_recipe(self) -> dict[str, Any]:
        """recipe.yaml as plain data."""
        return yaml.safe_load(self.recipe_file.read_text())

    def saved_recipe_is(self, recipe: Recipe) -> bool:
        """Whether recipe.yaml holds exactly `recipe` (answered from the file alone)."""
        return self.recipe_file.is_file() and self.saved_recipe() == recipe.to_dict()

    def require_model(self) -> Path:
        if not self.model_file.is_file():
            raise UserError(f"{self.path} has no model.safetensors yet: the run has not finished training")
        return self.model_file

    def wandb_run_id(self) -> str:
        """The W&B run id of this run dir, made on first use, so a resumed run continues the same W&B run."""
        if self.wandb_id_file.is_file():
            return self.wandb_id_file.read_text().strip()
        run_id = secrets.token_hex(6)
        write_text_atomic(self.wandb_id_file, run_id + "\n")
        return run_id

    def set_aside(self) -> Path:
        """Rename the whole run dir to '<name>.old-<time>' (used by --restart; nothing is deleted)."""
        target = self.path.with_name(f"{self.path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        self.path.rename(target)
        return target

    def superseded_folder(self) -> Path:
        """A new folder for checkpoints that --resume of an older one put aside (nothing is deleted)."""
        target = self.path / f"superseded-{time.strftime('%Y%m%d-%H%M%S')}"
        target.mkdir()
        return target

"""The run directory: the one place that knows where a run's files live.

  .trainwright         marker: this folder is a run dir trainwright made (nothing else makes it)
  recipe.yaml          the resolved recipe (data paths absolute)
  data.json            the data's fingerprint and preprocessing statistics
  metrics.jsonl        one JSON object per log event
  summary.json         written when the run completes
  model.safetensors    final weights
  checkpoints/         step_XXXXXXXX/ folders, latest.json, best.json
  plots/               loss_curves.png, predictions.png, confusion_matrix.png (classifiers)
  wandb/               W&B files; wandb_run_id.txt: the W&B run id, kept across restarts
  tensorboard/         TensorBoard event files
  samples/             rank<R>.jsonl: the sample indices each process trained on
  profile/             rank<R>.<start step>.pt.trace.json: trainer.profile's trace of each process

Beside it, `.<name>.trainwright-lock` exists while a `train` command holds the run dir (runlock.py).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import yaml

from trainwright import __version__
from trainwright.checkpoint.format import looks_like_safetensors
from trainwright.errors import UserError
from trainwright.recipe import Recipe, parse_yaml, read_yaml, validate
from trainwright.run.files import write_json_atomic, write_text_atomic

MARKER = ".trainwright"


# What W&B's sweep agent (`wandb agent`) sets for each run it starts.
WANDB_RUN_ID, WANDB_SWEEP_ID = "WANDB_RUN_ID", "WANDB_SWEEP_ID"


def default_run_dir(recipe_name: str) -> Path:
    """`runs/<recipe name>`; for a run a W&B sweep agent started, `runs/<recipe name>-sweep-<sweep id>/<run
    id>`, so that every trial of the sweep trains in a run dir of its own."""
    sweep, run = os.environ.get(WANDB_SWEEP_ID), os.environ.get(WANDB_RUN_ID)
    if sweep and run:
        return Path("runs") / f"{recipe_name}-sweep-{sweep}" / run
    return Path("runs") / recipe_name


class DamagedFile(UserError):
    """A run file that exists but cannot be read as what it should be."""


class RunDir:
    """Paths inside one run dir, and the few questions asked of it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.marker_file = self.path / MARKER
        self.recipe_file = self.path / "recipe.yaml"
        self.data_file = self.path / "data.json"
        self.metrics_file = self.path / "metrics.jsonl"
        self.summary_file = self.path / "summary.json"
        self.model_file = self.path / "model.safetensors"
        self.raw_model_file = self.path / "model_raw.safetensors"  # the raw weights, when trainer.ema averaged them
        self.checkpoints = self.path / "checkpoints"
        self.plots = self.path / "plots"
        self.loss_curves = self.plots / "loss_curves.png"
        self.predictions_plot = self.plots / "predictions.png"
        self.confusion_plot = self.plots / "confusion_matrix.png"
        self.wandb = self.path / "wandb"  # W&B makes it: its `dir` is the run dir
        self.wandb_id_file = self.path / "wandb_run_id.txt"
        self.tensorboard = self.path / "tensorboard"
        self.samples = self.path / "samples"
        self.profile = self.path / "profile"

    @property
    def lock_file(self) -> Path:
        """Beside the run dir, so it exists before the run dir and stays when --restart renames it."""
        resolved = self.path.resolve()
        return resolved.parent / f".{resolved.name}.trainwright-lock"

    def sample_file(self, rank: int) -> Path:
        return self.samples / f"rank{rank}.jsonl"

    def sample_files(self) -> dict[int, Path]:
        """rank -> the sample log of every process that ever trained this run."""
        return {int(path.stem[4:]): path for path in self.samples.glob("rank*.jsonl")}

    @classmethod
    def existing(cls, path: str | Path) -> RunDir:
        """A run dir that must already hold a run (for eval, predict, plot)."""
        run = cls(path)
        if run.path.is_file():
            raise UserError(f"{run.path} is a file; give the run dir (the folder `trainwright train --run-dir` wrote)")
        if not run.path.is_dir():
            raise UserError(f"run dir not found: {run.path}")
        if not run.holds_run():
            raise UserError(
                f"{run.path} is not a trainwright run dir (it has no {MARKER} marker); "
                "give the folder a `trainwright train ... --run-dir DIR` wrote"
            )
        return run

    def holds_run(self) -> bool:
        """Whether trainwright made this folder (its marker is there: a recipe.yaml alone proves nothing)."""
        return self.marker_file.is_file()

    def is_foreign(self) -> bool:
        """True when the folder exists, is not empty and is not a run: training there could clobber files."""
        return self.path.exists() and (not self.path.is_dir() or (any(self.path.iterdir()) and not self.holds_run()))

    def check_location(self, restart: bool) -> None:
        """Refuse a run dir that cannot be made or written, before anything is built (every process)."""
        existing = next(p for p in [self.path.absolute(), *self.path.absolute().parents] if p.exists())
        if not existing.is_dir():
            raise UserError(f"--run-dir {self.path}: {existing} is a file, so no folder can be made under it")
        if not os.access(existing, os.W_OK):
            raise UserError(f"--run-dir {self.path}: {existing} is not writable ({_access_problem(existing)})")
        if restart and Path.cwd().resolve().is_relative_to(self.path.resolve()):
            raise UserError(
                f"--restart would move {self.path} aside, and it holds the current folder; run the command from "
                "outside it"
            )

    def create(self) -> None:
        """Make the run dir and mark it as trainwright's."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.holds_run():
            marker = {"trainwright_version": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
            write_json_atomic(self.marker_file, marker)

    def recipe(self) -> Recipe:
        return validate(read_yaml(self.recipe_file), str(self.recipe_file))

    def write_recipe(self, recipe: Recipe) -> None:
        write_text_atomic(self.recipe_file, yaml.safe_dump(recipe.to_dict(), sort_keys=False))

    def read_json(self, path: Path) -> Any:
        """A JSON file of the run (None when missing); a damaged one is a DamagedFile error naming it."""
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DamagedFile(f"{path} is damaged ({exc})") from None

    def completed_summary(self) -> dict[str, Any] | None:
        """summary.json of a run that completed, else None (DamagedFile when it cannot be read)."""
        summary = self.read_json(self.summary_file)
        if summary is not None and not isinstance(summary, dict):
            raise DamagedFile(f"{self.summary_file} is damaged (not a JSON object)")
        return summary if summary and summary.get("status") == "completed" else None

    def saved_recipe(self) -> dict[str, Any]:
        """recipe.yaml as plain data (DamagedFile when it cannot be read)."""
        try:
            data = parse_yaml(self.recipe_file.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise DamagedFile(f"{self.recipe_file} is damaged ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise DamagedFile(f"{self.recipe_file} is damaged (not a recipe mapping)")
        return data

    def saved_recipe_is(self, recipe: Recipe) -> bool:
        """Whether recipe.yaml holds exactly `recipe` (answered from the file alone)."""
        return self.recipe_file.is_file() and self.saved_recipe() == recipe.to_dict()

    def model_is_intact(self) -> bool:
        """Whether model.safetensors is there and whole (read as bytes: no torch)."""
        return self.model_file.is_file() and looks_like_safetensors(self.model_file)

    def require_model(self) -> Path:
        if not self.model_file.is_file():
            if self.completed_summary() is not None:
                raise UserError(
                    f"{self.model_file} is missing although the run completed; run `trainwright train` with its "
                    f"recipe and --run-dir {self.path} to write it again from the last checkpoint"
                )
            raise UserError(f"{self.path} has no model.safetensors yet: the run has not finished training")
        return self.model_file

    def wandb_run_id(self) -> str:
        """The W&B run id of this run dir, made on first use (W&B's WANDB_RUN_ID where set, as a sweep agent
        sets it for each run it starts), so a resumed run continues the same W&B run."""
        if self.wandb_id_file.is_file():
            return self.wandb_id_file.read_text().strip()
        run_id = os.environ.get(WANDB_RUN_ID) or secrets.token_hex(6)
        write_text_atomic(self.wandb_id_file, run_id + "\n")
        return run_id

    def set_aside(self) -> Path:
        """Rename the whole run dir to '<name>.old-<time>' (used by --restart; nothing is deleted)."""
        target = _free_name(self.path.parent, f"{self.path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        self.path.rename(target)
        return target

    def superseded_folder(self) -> Path:
        """A new folder for checkpoints that --resume of an older one put aside (nothing is deleted)."""
        target = _free_name(self.path, f"superseded-{time.strftime('%Y%m%d-%H%M%S')}")
        target.mkdir()
        return target


def _free_name(folder: Path, stem: str) -> Path:
    """`folder/stem`, or `folder/stem-2`, ... when that exists (two commands within one second)."""
    target, count = folder / stem, 1
    while target.exists():
        count += 1
        target = folder / f"{stem}-{count}"
    return target


def _access_problem(path: Path) -> str:
    """Why a folder cannot be written: a read-only file system or missing permission."""
    try:
        probe = os.statvfs(path)
    except OSError:
        return "permission denied"
    return "read-only file system" if probe.f_flag & os.ST_RDONLY else "permission denied"

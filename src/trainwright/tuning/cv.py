"""`trainwright cv RECIPE --folds K`: k-fold cross-validation. Fold k is the run dir DIR/fold_k, trained
with `cv.folds=K cv.fold=k` (data/folds.py makes the split); DIR/cv_summary.json and a printed table give
each fold's final validation metrics and their mean and standard deviation."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

from trainwright.components import build_data, check_recipe
from trainwright.errors import EXIT_NONFINITE, UserError
from trainwright.recipe import Recipe, load_recipe
from trainwright.run.files import write_json_atomic
from trainwright.tuning.runner import Job, run_jobs
from trainwright.tuning.space import MAX_TRIALS
from trainwright.tuning.study import claim, final_metrics, format_table, lock, run_labels

SPEC_FILE = "cv.json"
SUMMARY_FILE = "cv_summary.json"


def fold_job(recipe_path: Path, overrides: list[str], recipe: Recipe, folds: int, k: int, folder: Path) -> Job:
    """The job of fold k; its W&B run is in the group named after the CV folder, tagged with its fold."""
    labels = run_labels(recipe, f"{recipe.name}-fold_{k}", folder, ["cv", f"fold_{k}"])
    return Job(
        f"fold_{k}", recipe_path, [*overrides, f"cv.folds={folds}", f"cv.fold={k}", *labels], folder / f"fold_{k}"
    )


def cross_validate(
    recipe_path: Path, overrides: list[str], folds: int | None, run_dir: str | None, parallel: int
) -> int:
    recipe = load_recipe(recipe_path, overrides)
    if folds is None:
        folds = recipe.cv.folds if recipe.cv else None
    if folds is None:
        raise UserError("cv: give --folds K (or a recipe section cv: {folds: K})")
    if folds < 2:
        raise UserError(f"--folds must be at least 2, got {folds}")
    if folds > MAX_TRIALS:
        raise UserError(f"--folds {folds:,}: a cv has at most {MAX_TRIALS:,} folds (each is a run dir and a training)")
    folder = Path(run_dir or Path("runs") / f"{recipe.name}-cv")
    first = load_recipe(recipe_path, fold_job(recipe_path, overrides, recipe, folds, 1, folder).overrides)
    check_recipe(first)  # every check before any run starts (or any other fold is made)
    build_data(first)  # the folds can be made (K is at most the number of items)
    jobs = [fold_job(recipe_path.absolute(), overrides, recipe, folds, k, folder) for k in range(1, folds + 1)]
    with lock(folder):
        claim(folder, SPEC_FILE, {"recipe": str(recipe_path.absolute()), "overrides": overrides, "folds": folds}, "cv",
              recipe, set_per_run=("cv.folds", "cv.fold"))
        code = run_jobs(jobs, parallel, folder)
    if code != 0:
        return code
    summaries = {job.name: job.completed() for job in jobs}
    diverged = [name for name, summary in summaries.items() if summary is None]  # stopped at a non-finite loss
    if diverged:
        print(f"trainwright: no {SUMMARY_FILE}: {', '.join(diverged)} stopped at a non-finite loss, and a mean over "
              "the other folds would not be a K-fold estimate; change the recipe (a lower optimizer.lr?) and run "
              "the command with another --run-dir", file=sys.stderr)
        return EXIT_NONFINITE
    print_table(write_summary(folder, {name: summary for name, summary in summaries.items() if summary is not None}))
    return 0


def write_summary(folder: Path, summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """cv_summary.json: every fold's final metrics (from its summary.json), and their mean and (population)
    standard deviation."""
    per_fold = {name: final_metrics(summary) for name, summary in summaries.items()}
    names = sorted({name for metrics in per_fold.values() for name in metrics})
    values = {name: [m[name] for m in per_fold.values() if name in m] for name in names}
    summary = {
        "folds": per_fold,
        "mean": {name: statistics.fmean(v) for name, v in values.items()},
        "std": {name: statistics.pstdev(v) for name, v in values.items()},
    }
    write_json_atomic(folder / SUMMARY_FILE, summary)
    return summary


def print_table(summary: dict[str, Any]) -> None:
    names = list(summary["mean"])
    rows = [["fold", *names]]
    rows += [[fold, *(f"{metrics.get(name, float('nan')):.4f}" for name in names)]
             for fold, metrics in summary["folds"].items()]
    rows.append(["mean±std", *(f"{summary['mean'][n]:.4f}±{summary['std'][n]:.4f}" for n in names)])
    print(format_table(rows, "l" + "r" * len(names)))

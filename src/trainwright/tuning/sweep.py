"""`trainwright sweep SPEC.yaml`: one run dir per trial of the spec's search space (DIR/trial_NNN, recorded
with its overrides), trained one after another, N at a time, or as a Slurm job array (slurm_array.py);
then DIR/sweep.json, DIR/sweep.csv and a printed leaderboard ranked by the spec's metric."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from trainwright.components import build_data, check_recipe, metric_names
from trainwright.errors import EXIT_NONFINITE, UserError, did_you_mean
from trainwright.recipe import load_recipe, parse_override
from trainwright.run.files import atomic_open, write_json_atomic
from trainwright.tuning.runner import Job, run_jobs
from trainwright.tuning.space import SweepSpec, load_spec, overrides
from trainwright.tuning.study import claim, final_metrics, format_table, lock, run_labels

SPEC_FILE = "sweep_spec.json"
RESULTS_FILE = "sweep.json"
TABLE_FILE = "sweep.csv"


def check_common(spec: SweepSpec, spec_path: Path, common: list[str]) -> None:
    """A command-line override of a key the spec sweeps (or of a section holding one) would be replaced by
    every trial's value: refused, rather than dropped without a word."""
    for text in common:
        key = ".".join(parse_override(text)[0])
        for swept in spec.parameters:
            if key == swept or swept.startswith(f"{key}.") or key.startswith(f"{swept}."):
                raise UserError(
                    f"sweep: the override '{text}' sets {key}, which {spec_path} sweeps ({swept}): every trial would "
                    f"train with the spec's values instead; remove the override, or remove {swept} from the spec's "
                    "parameters"
                )


def trial_jobs(spec: SweepSpec, recipe_path: Path, common: list[str], folder: Path) -> list[Job]:
    """One job per trial: the common overrides, then the trial's values, then its name and W&B group."""
    base = load_recipe(recipe_path, common)
    jobs = []
    for number, values in enumerate(spec.trials(), start=1):
        name = f"trial_{number:03d}"
        trial = [*common, *overrides(values)]
        jobs.append(Job(name, recipe_path, [*trial, *run_labels(base, f"{base.name}-{name}", folder, ["sweep", name])],
                        folder / name))
    return jobs


def check_trials(spec: SweepSpec, jobs: list[Job]) -> None:
    """Every trial's recipe is valid and reports the spec's metric (before any run starts)."""
    recipes = [load_recipe(job.recipe, job.overrides) for job in jobs]
    for recipe in recipes:
        check_recipe(recipe)
    reported = ["val/loss", *(f"val/{n}" for n in metric_names(recipes[0], build_data(recipes[0]).task))]
    if spec.metric.name not in reported:
        raise UserError(
            f"metric.name: no trial reports '{spec.metric.name}'{did_you_mean(spec.metric.name, reported)} "
            f"(they report: {', '.join(reported)})"
        )


def sweep(spec_path: Path, common: list[str], run_dir: str | None, parallel: int, slurm: bool) -> int:
    spec, recipe_path = load_spec(spec_path)
    check_common(spec, spec_path, common)
    folder = Path(run_dir or Path("runs") / spec_path.stem)
    jobs = trial_jobs(spec, recipe_path, common, folder)
    check_trials(spec, jobs)
    with lock(folder):
        asked = {"spec": spec.model_dump(mode="json"), "recipe": str(recipe_path), "overrides": common}
        claim(folder, SPEC_FILE, asked, "sweep", load_recipe(recipe_path, common))
        if slurm:
            from trainwright.tuning.slurm_array import submit_array

            return submit_array(jobs, folder)
        code = run_jobs(jobs, parallel, folder)
        print_leaderboard(write_results(spec, jobs, folder), spec.metric.name)
    return code


def write_results(spec: SweepSpec, jobs: list[Job], folder: Path) -> list[dict[str, Any]]:
    """sweep.json and sweep.csv: every trial with its values, status and metric, best first."""
    rows: list[dict[str, Any]] = []
    for job in jobs:
        summary = job.completed()
        value = final_metrics(summary).get(spec.metric.name)
        status = "completed" if summary else "diverged" if job.exit_code == EXIT_NONFINITE else "unfinished"
        rows.append({"trial": job.name, "status": status, spec.metric.name: value,
                     "values": swept_values(job, spec), "run_dir": str(job.run_dir)})
    sign = -1 if spec.metric.goal == "maximize" else 1
    rows.sort(key=lambda row: (row[spec.metric.name] is None or math.isnan(row[spec.metric.name]),
                               sign * (row[spec.metric.name] or 0.0)))
    write_json_atomic(folder / RESULTS_FILE, {"metric": spec.metric.model_dump(), "trials": rows})
    with atomic_open(folder / TABLE_FILE) as file:
        writer = csv.writer(file)
        writer.writerow(["trial", "status", spec.metric.name, *spec.parameters])
        for row in rows:
            writer.writerow([row["trial"], row["status"], row[spec.metric.name], *row["values"].values()])
    return rows


def swept_values(job: Job, spec: SweepSpec) -> dict[str, str]:
    """The trial's value of each swept key, as its override gives it."""
    given = dict(item.split("=", 1) for item in job.overrides)
    return {key: given[key] for key in spec.parameters}


def print_leaderboard(rows: list[dict[str, Any]], metric: str) -> None:
    table = [["rank", "trial", metric, "status", "values"]]
    for rank, row in enumerate(rows, start=1):
        value = "-" if row[metric] is None else f"{row[metric]:.4f}"
        shown = " ".join(f"{key}={text}" for key, text in row["values"].items())
        table.append([str(rank), row["trial"], value, row["status"], shown])
    print(format_table(table, "llrll"))

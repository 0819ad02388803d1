"""k-fold cross-validation and sweeps (issue 9): one ordinary run dir per fold or trial, a summary or
leaderboard computed from their summaries, exact resume after a kill, training-fold-only statistics,
a Slurm job array, and one message for every bad spec before any run starts."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
import yaml

import processes
from conftest import (
    HEART_SMALL,
    RECIPES,
    REPO,
    assert_ok,
    assert_resumed,
    checkpoint_steps,
    cli_env,
    cli_env_with_path,
    describe,
    newest_valid_checkpoint,
    no_credentials_env,
    run_cli,
    wandb_records,
)
from kill_at_step import KILL_AT_STEP_VAR, KILL_IN_VAR
from reliability_helpers import HEART, HOUSE, snapshot, user_error
from test_slurm import _job_env, needs_cluster
from trainwright.cli import main
from trainwright.components import build_data
from trainwright.data.folds import Fold
from trainwright.recipe import load_recipe
from trainwright.tuning.cv import print_table
from trainwright.tuning.space import MAX_TRIALS, Metric, load_spec
from trainwright.tuning.sweep import trial_jobs, write_results

SWEEP = RECIPES / "sweeps" / "heart_lr_width.yaml"
# 800 points, 3 folds: each trains on ~533 (9 steps of 64) and validates on the rest; a checkpoint every 4 steps.
CV_ARGS = [HEART_SMALL, "trainer.epochs=1", "checkpoint.every_steps=4", "logging.wandb=false"]
HOOKS = Path(__file__).with_name("hooks")  # its sitecustomize.py sets a kill from the environment (kill_at_step.py)
TINY_SWEEP = ["data.num_points=400", "trainer.epochs=1", "logging.wandb=false"]


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cv") / "heart-cv"
    assert_ok(run_cli("cv", HEART, "--folds", "3", *CV_ARGS, "--run-dir", folder))
    return folder


def test_cv_trains_one_run_per_fold_and_summarises_them(cv_run):
    folds = [cv_run / f"fold_{k}" for k in (1, 2, 3)]
    assert all(_summary(fold)["status"] == "completed" for fold in folds)
    # The folds split the 800 points: each validates on its third and trains on the rest.
    for fold in folds:
        splits = json.loads((fold / "data.json").read_text())["splits"]
        assert splits["val"]["items"] in (266, 267) and splits["train"]["items"] + splits["val"]["items"] == 800
    assert len({json.loads((f / "data.json").read_text())["splits"]["val"]["sha256"] for f in folds}) == 3
    summary = json.loads((cv_run / "cv_summary.json").read_text())
    accuracy = [_summary(fold)["val/accuracy"] for fold in folds]
    assert summary["folds"]["fold_2"]["val/accuracy"] == accuracy[1]
    assert summary["mean"]["val/accuracy"] == pytest.approx(statistics.fmean(accuracy))
    assert summary["std"]["val/accuracy"] == pytest.approx(statistics.pstdev(accuracy))


def test_cv_killed_during_a_fold_resumes_to_the_same_weights(cv_run, tmp_path):
    """SIGKILL (the cv command and its fold, at once) right after fold 2's checkpoint of step 4 is on disk."""
    folder = tmp_path / "heart-cv"
    args = ["cv", HEART, "--folds", "3", *CV_ARGS, "--run-dir", folder]
    killed = run_cli(*args, env=cli_env_with_path(HOOKS, **{KILL_AT_STEP_VAR: "4", KILL_IN_VAR: "fold_2"}))
    assert killed.returncode == -signal.SIGKILL, describe(killed)
    assert checkpoint_steps(folder / "fold_2") == [4] and (folder / "fold_1" / "summary.json").exists()
    assert not (folder / "fold_2" / "summary.json").exists() and not (folder / "fold_3").exists()
    result = assert_ok(run_cli(*args))
    assert_resumed(result.stdout + result.stderr, 4)  # fold 2 went on from its checkpoint
    for k in (1, 2, 3):
        weights = (folder / f"fold_{k}" / "model.safetensors").read_bytes()
        assert weights == (cv_run / f"fold_{k}" / "model.safetensors").read_bytes(), f"fold_{k}"
    assert json.loads((folder / "cv_summary.json").read_text()) == json.loads((cv_run / "cv_summary.json").read_text())


def test_folds_partition_the_items_and_keep_class_proportions():
    labels = torch.tensor([0] * 90 + [1] * 30)
    validation = [Fold(k, 4, seed=7).rows(len(labels), labels)[1] for k in (1, 2, 3, 4)]
    assert sorted(torch.cat(validation).tolist()) == list(range(120))
    assert all(len(rows) == 30 and int(labels[rows].sum()) in (7, 8) for rows in validation)  # 30 of 120: a quarter
    train, val = Fold(2, 4, seed=7).rows(120, labels)
    assert set(train.tolist()).isdisjoint(val.tolist()) and len(train) + len(val) == 120


def test_house_prices_cv_statistics_come_from_the_training_folds_only():
    shipped = pd.read_csv(REPO / "examples" / "house_prices.csv")
    recipe = load_recipe(HOUSE, [f"data.path={REPO / 'examples' / 'house_prices.csv'}", "cv.folds=4", "cv.fold=3"])
    stats = build_data(recipe).preprocessing
    train_rows, _ = Fold(3, 4, seed=recipe.seed).rows(len(shipped))
    train = shipped.iloc[train_rows.numpy()]
    rooms = train["NumRooms"].fillna(train["NumRooms"].mean())
    assert stats["fill"]["NumRooms"] == pytest.approx(train["NumRooms"].mean())
    assert stats["fill"]["NumRooms"] != pytest.approx(shipped["NumRooms"].mean())  # all rows would leak
    assert stats["standardize"]["NumRooms"] == pytest.approx({"mean": rooms.mean(), "std": rooms.std()})
    assert stats["target"]["mean"] == pytest.approx(train["Price"].mean())
    assert stats["target"]["std"] == pytest.approx(train["Price"].std())


# --- sweeps ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("sweep") / "heart-sweep"
    result = assert_ok(run_cli("sweep", SWEEP, *TINY_SWEEP, "--run-dir", folder))
    return folder, result.stdout


def test_the_shipped_sweep_trains_six_trials_and_ranks_them(sweep_run):
    folder, printed = sweep_run
    spec = yaml.safe_load(SWEEP.read_text())
    expected = [(lr, hidden) for lr in spec["parameters"]["optimizer.lr"]["values"]
                for hidden in spec["parameters"]["model.hidden"]["values"]]
    trials = sorted(folder.glob("trial_*/"))
    assert [t.name for t in trials] == [f"trial_{n:03d}" for n in range(1, 7)]
    for trial, (lr, hidden) in zip(trials, expected):  # each trial trained with its own values
        saved = yaml.safe_load((trial / "recipe.yaml").read_text())
        assert (saved["optimizer"]["lr"], saved["model"]["hidden"]) == (lr, hidden)
    results = json.loads((folder / "sweep.json").read_text())["trials"]
    accuracy = {t.name: _summary(t)["val/accuracy"] for t in trials}
    assert [row["val/accuracy"] for row in results] == sorted(accuracy.values(), reverse=True)
    assert all(accuracy[row["trial"]] == row["val/accuracy"] for row in results)
    table = pd.read_csv(folder / "sweep.csv")
    assert list(table.columns) == ["trial", "status", "val/accuracy", "optimizer.lr", "model.hidden"]
    assert len(table) == 6 and set(table["status"]) == {"completed"}
    assert printed.count("completed") == 6 and "rank" in printed


@pytest.mark.parametrize("goal", ["minimize", "maximize"])
def test_the_leaderboard_ranks_the_trials_in_the_direction_of_the_goal(sweep_run, tmp_path, goal):
    """The six trials' val/loss all differ (their accuracies tie on this tiny data), so the order is checked:
    best first, lowest for minimize, highest for maximize."""
    done, _ = sweep_run
    spec, recipe = load_spec(SWEEP)
    spec = spec.model_copy(update={"metric": Metric(name="val/loss", goal=goal)})
    jobs = trial_jobs(spec, recipe, TINY_SWEEP, done)
    rows = write_results(spec, jobs, tmp_path)
    loss = {job.name: _summary(job.run_dir)["val/loss"] for job in jobs}
    assert len(set(loss.values())) == 6, loss
    assert [row["trial"] for row in rows] == sorted(loss, key=loss.get, reverse=goal == "maximize")
    assert [row["val/loss"] for row in rows] == sorted(loss.values(), reverse=goal == "maximize")
    assert list(pd.read_csv(tmp_path / "sweep.csv")["trial"]) == [row["trial"] for row in rows]


def test_a_sweep_run_again_trains_only_the_unfinished_and_missing_trials(sweep_run, tmp_path):
    import shutil

    done, _ = sweep_run
    folder = tmp_path / "heart-sweep"
    shutil.copytree(done, folder)
    for name in ("model.safetensors", "summary.json"):  # trial 4 stopped before its end
        (folder / "trial_004" / name).unlink()
    shutil.rmtree(folder / "trial_006")  # trial 6 never started
    weights = folder / "trial_002" / "model.safetensors"  # trial 2 completed, then its weights were cut short
    weights.write_bytes(weights.read_bytes()[:100])
    (folder / "trial_005" / "summary.json").write_text('{"status": "compl')  # and trial 5's summary
    untouched = {t.name: (t / "model.safetensors").stat().st_mtime_ns for t in folder.glob("trial_00[13]")}
    result = assert_ok(run_cli("sweep", SWEEP, *TINY_SWEEP, "--run-dir", folder))
    assert result.stderr.count("training in") == 4, result.stderr
    assert {t: (folder / t / "model.safetensors").stat().st_mtime_ns for t in untouched} == untouched
    for name in ("trial_002", "trial_004", "trial_005", "trial_006"):
        assert (folder / name / "model.safetensors").read_bytes() == (done / name / "model.safetensors").read_bytes()

    def ranked(path: Path) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "run_dir"} for row in json.loads(path.read_text())["trials"]]

    assert ranked(folder / "sweep.json") == ranked(done / "sweep.json")


def test_a_sweep_in_parallel_gives_the_same_trials(sweep_run, tmp_path):
    """The shipped sweep's first 3 trials (run_cap), 2 at a time: the third starts when a slot frees."""
    done, _ = sweep_run
    folder = tmp_path / "parallel"
    spec = {**yaml.safe_load(SWEEP.read_text()), "recipe": str(HEART), "run_cap": 3}
    (tmp_path / "first3.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))  # the grid's order: as shipped
    assert_ok(run_cli("sweep", tmp_path / "first3.yaml", *TINY_SWEEP, "--run-dir", folder, "--parallel", "2"))
    assert sorted(t.name for t in folder.glob("trial_*/")) == ["trial_001", "trial_002", "trial_003"]
    for trial in sorted(done.glob("trial_00[123]/")):
        assert _summary(folder / trial.name)["val/loss"] == pytest.approx(_summary(trial)["val/loss"], rel=1e-5)
    assert (folder / "trial_003.log").is_file()  # with several at a time, each trial logs to a file


@needs_cluster
def test_a_sweep_as_a_slurm_job_array(tmp_path):
    folder = tmp_path / "array"
    spec = tmp_path / "two.yaml"
    spec.write_text(yaml.safe_dump({"recipe": str(HEART), "method": "grid", "metric": {"name": "val/loss"},
                                    "parameters": {"optimizer.lr": {"values": [0.05, 0.01]}}}))
    # Not run_cli: its processes carry the test's tag, which sbatch would pass on to the jobs, and tagged
    # processes are killed when the command ends.
    result = subprocess.run([sys.executable, "-m", "trainwright", "sweep", spec, *TINY_SWEEP, "--run-dir", folder,
                             "--slurm"], env=_job_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    job = result.stdout.split("Submitted job array ")[1].split()[0]
    deadline = time.monotonic() + 240
    while not all((folder / f"trial_00{n}" / "summary.json").is_file() for n in (1, 2)):
        assert time.monotonic() < deadline, [p.read_text() for p in folder.glob("slurm-*.out")]
        time.sleep(1)
    assert sorted(p.name for p in folder.glob(f"slurm-{job}_*.out")) == [f"slurm-{job}_1.out", f"slurm-{job}_2.out"]
    result = assert_ok(run_cli("sweep", spec, *TINY_SWEEP, "--run-dir", folder))
    assert "training in" not in result.stderr and result.stdout.count("completed") == 2


# --- bad input -------------------------------------------------------------------------------------------


def _spec(tmp_path: Path, **changes) -> Path:
    spec = yaml.safe_load(SWEEP.read_text())
    spec["recipe"] = str(HEART)
    spec.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(("changes", "fragments"), [
    ({"parameters": {"optimizer.momentun": {"values": [0.5]}}}, ("optimizer.momentun", "did you mean 'momentum'")),
    ({"parameters": {"trainer.epochz": {"values": [1]}}}, ("trainer.epochz",)),
    ({"parameters": {}}, ("search space is empty",)),
    ({"metric": {"name": "val/acuracy", "goal": "maximize"}}, ("val/acuracy", "did you mean 'val/accuracy'")),
    ({"parameters": {"optimizer.lr": {"min": 0.001, "max": 0.1}}}, ("optimizer.lr", "method: random")),
    ({"method": "random"}, ("run_cap",)),
    ({"parameters": {"optimizer.lr": {"values": []}}}, ("values is empty",)),
])
def test_a_bad_sweep_spec_is_one_message_before_any_run(capsys, tmp_path, changes, fragments):
    user_error(capsys, "sweep", _spec(tmp_path, **changes), *TINY_SWEEP, "--run-dir", tmp_path / "sweep",
               fragments=fragments)
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("override", [
    "optimizer.lr=0.5", "model={name: mlp, in_features: 2, hidden: [4], out_features: 1}",  # a key, its section
])
def test_a_command_line_override_of_a_swept_key_is_refused(capsys, tmp_path, override):
    """Every trial's value would replace it: one message instead of a sweep that ignores it."""
    swept = "optimizer.lr" if override.startswith("optimizer") else "model.hidden"
    user_error(capsys, "sweep", _spec(tmp_path), *TINY_SWEEP, override, "--run-dir", tmp_path / "sweep",
               fragments=(f"sweep: the override '{override}' sets", f"sweeps ({swept})", "remove the override"))
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(("argv", "fragments"), [
    (["--folds", "1"], ("--folds must be at least 2, got 1",)),
    (["--folds", "0"], ("--folds must be at least 2, got 0",)),  # not argparse's "at least 1"
    (["--folds", "5", "data.num_points=3"], ("cv.folds=5", "more folds than the 3 items")),
    ([], ("--folds K",)),
])
def test_bad_cv_settings_are_one_message_before_any_run(capsys, tmp_path, argv, fragments):
    user_error(capsys, "cv", HEART, *TINY_SWEEP, *argv, "--run-dir", tmp_path / "cv", fragments=fragments)
    assert not (tmp_path / "cv").exists()


def test_a_cv_with_a_diverged_fold_has_no_summary_and_exits_3(tmp_path):
    folder = tmp_path / "cv"
    result = run_cli("cv", HOUSE, "--folds", "2", "logging.wandb=false", "optimizer.lr=1e10", "--run-dir", folder)
    assert result.returncode == 3, result.stderr
    assert "fold_1, fold_2 stopped at a non-finite loss" in result.stderr and "Traceback" not in result.stderr
    assert not (folder / "cv_summary.json").exists()


def test_a_study_folder_of_other_settings_is_refused(capsys, cv_run):
    before = sorted(p.name for p in cv_run.iterdir())
    user_error(capsys, "cv", HEART, "--folds", "4", *CV_ARGS, "--run-dir", cv_run, fragments=("other settings",))
    assert sorted(p.name for p in cv_run.iterdir()) == before


def test_points_of_each_class_in_the_heart_folds_are_balanced():
    recipe = load_recipe(HEART, ["data.num_points=3000", "cv.folds=3", "cv.fold=1"])
    inside = [float(build_data(recipe.model_copy(update={"cv": recipe.cv.model_copy(update={"fold": k})})).val.targets
                    .mean()) for k in (1, 2, 3)]
    assert max(inside) - min(inside) < 2 / 1000, np.round(inside, 4)


def test_the_command_line_a_wandb_sweep_agent_builds_is_understood(capsys):
    """`wandb agent` fills ${args_no_hyphens} with `key=value` for each swept key (wandb's own code here)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    values = {"optimizer.lr": 0.03, "model.hidden": [32, 16], "scheduler.name": "cosine", "trainer.epochs": 2}
    args = create_sweep_command_args({"args": {key: {"value": v} for key, v in values.items()}})["args_no_hyphens"]
    assert args == ["optimizer.lr=0.03", "model.hidden=[32, 16]", "scheduler.name=cosine", "trainer.epochs=2"]
    assert main(["check", str(HEART), *args]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert (resolved["optimizer"]["lr"], resolved["model"]["hidden"], resolved["scheduler"]["name"],
            resolved["trainer"]["epochs"]) == (0.03, [32, 16], "cosine", 2)


def test_every_fold_and_trial_is_a_wandb_run_in_the_study_group(tmp_path):
    """W&B on (offline: no key): each fold's and trial's run is in the group named after the study folder,
    tagged with the study and its own name, as the run's own records say."""
    env = no_credentials_env(tmp_path / "home")
    tiny = ["data.num_points=400", "trainer.epochs=1"]
    spec = tmp_path / "one.yaml"
    spec.write_text(yaml.safe_dump({"recipe": str(HEART), "method": "grid", "metric": {"name": "val/loss"},
                                    "parameters": {"optimizer.lr": {"values": [0.05]}}}))
    assert_ok(run_cli("cv", HEART, "--folds", "2", *tiny, "--run-dir", tmp_path / "my-cv", env=env))
    assert_ok(run_cli("sweep", spec, *tiny, "--run-dir", tmp_path / "my-sweep", env=env))
    expected = {tmp_path / "my-cv" / "fold_1": ("my-cv", "cv", "fold_1"),
                tmp_path / "my-cv" / "fold_2": ("my-cv", "cv", "fold_2"),
                tmp_path / "my-sweep" / "trial_001": ("my-sweep", "sweep", "trial_001")}
    for run_dir, (group, kind, name) in expected.items():
        [wandb_file] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
        [run] = [r["run"] for r in wandb_records(wandb_file, env) if r["type"] == "run"]
        assert run["run_group"] == group, run_dir
        assert run["tags"] == ["heart", kind, name] and run["display_name"] == f"heart-{name}", run


def test_plot_of_an_unfinished_cv_is_one_message(capsys, tmp_path):
    folder = tmp_path / "cv"
    folder.mkdir()
    (folder / "cv.json").write_text("{}")
    user_error(capsys, "plot", folder, fragments=(str(folder), "has not finished", "cv_summary.json"))
    assert not (folder / "plots").exists()


def test_each_run_a_wandb_sweep_agent_starts_trains_in_its_own_run_dir_under_the_agents_run_id(tmp_path):
    """`wandb agent` runs the spec's `command` once per trial with WANDB_SWEEP_ID and WANDB_RUN_ID set and the
    trial's values as key=value: each trial trains in a run dir of its own (not all in runs/heart, which
    would refuse the second trial's other recipe), and W&B records it under the agent's run id."""
    command = yaml.safe_load(SWEEP.read_text())["command"]
    assert command[-1] == "${args_no_hyphens}"
    for run_id, lr in (("trial1", 0.1), ("trial2", 0.03)):
        argv = [sys.executable if a == "${interpreter}" else str(HEART) if a == "recipes/heart.yaml" else a
                for a in command[1:-1]]  # without ${env}: the agent's /usr/bin/env changes nothing here
        env = no_credentials_env(tmp_path / "home", WANDB_SWEEP_ID="sw7", WANDB_RUN_ID=run_id)
        result = processes.run([*argv, f"optimizer.lr={lr}", "data.num_points=400", "trainer.epochs=1"], env,
                               cwd=tmp_path)
        assert_ok(result)
        run_dir = tmp_path / "runs" / "heart-sweep-sw7" / run_id
        assert f"Run dir: runs/heart-sweep-sw7/{run_id}" in result.stdout
        assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["optimizer"]["lr"] == lr
        assert (run_dir / "wandb_run_id.txt").read_text().strip() == run_id  # what a resume of it passes to W&B
        [wandb_file] = run_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")
        assert {r["run"]["run_id"] for r in wandb_records(wandb_file, env) if r["type"] == "run"} == {run_id}


def test_plot_on_a_cv_or_sweep_folder_draws_the_comparison(capsys, cv_run, sweep_run):
    for folder, name in ((cv_run, "cv_metrics.png"), (sweep_run[0], "sweep_val_accuracy.png")):
        assert main(["plot", str(folder)]) == 0
        assert capsys.readouterr().out.split() == [str(folder / "plots" / name)]
        assert (folder / "plots" / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# --- issue 19: studies that are killed, edited, huge or in use --------------------------------------------

# 40,000 points for 10 epochs: ~5,000 steps, a checkpoint every 50, so a signal lands inside the training (at one
# epoch, the first trial could finish before the second had its first checkpoint).
LONG_TRIAL = ["data.num_points=40000", "trainer.epochs=10", "checkpoint.every_steps=50", "logging.wandb=false"]


def _two_trial_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "two.yaml"
    spec.write_text(yaml.safe_dump({"recipe": str(HEART), "method": "grid", "metric": {"name": "val/loss"},
                                    "parameters": {"optimizer.lr": {"values": [0.05, 0.01]}}}))
    return spec


def _trainings(sweep) -> list:
    """The `trainwright train` processes a study started (its children)."""
    return [p for p in sweep.children() if "train" in p.cmdline()]


def test_a_huge_grid_is_one_message_at_once(capsys, tmp_path):
    """8 keys of 10 values: 10^8 trials, counted without making them, refused before anything is written."""
    keys = ["optimizer.lr", "optimizer.momentum", "optimizer.weight_decay", "trainer.epochs", "data.batch_size",
            "seed", "data.num_points", "trainer.grad_clip"]
    spec = _spec(tmp_path, parameters={key: {"values": list(range(1, 11))} for key in keys})
    user_error(capsys, "sweep", spec, "--run-dir", tmp_path / "sweep",
               fragments=("100,000,000 trials", "10 x 10 x 10 x 10 x 10 x 10 x 10 x 10 values", f"{MAX_TRIALS:,}",
                          "run_cap"))
    assert not (tmp_path / "sweep").exists()


def test_a_capped_grid_is_made_one_trial_at_a_time(tmp_path):
    """run_cap takes the first N of a grid too large to make whole, in the grid's order."""
    keys = [f"k{n}" for n in range(8)]
    spec, _ = load_spec(_spec(tmp_path, run_cap=3, parameters={key: {"values": list(range(10))} for key in keys}))
    assert spec.count() == 3
    assert [list(trial.values()) for trial in spec.trials()] == [[0] * 7 + [n] for n in range(3)]


def test_a_recipe_edited_between_sweep_runs_is_refused_with_the_changed_keys(capsys, sweep_run, tmp_path):
    """The same spec on an edited recipe file: refused, naming the changed keys, the folder untouched. A
    swept key (model.hidden) counts too."""
    done, _ = sweep_run
    (tmp_path / "sweeps").mkdir()
    spec = tmp_path / "sweeps" / SWEEP.name
    spec.write_text(SWEEP.read_text())  # recipe: ../heart.yaml, now the edited copy beside it
    recipe = yaml.safe_load(HEART.read_text())
    recipe["model"]["hidden"], recipe["optimizer"]["momentum"] = [8, 4], 0.5
    (tmp_path / "heart.yaml").write_text(yaml.safe_dump(recipe))
    before = snapshot(done)
    message = user_error(capsys, "sweep", spec, *TINY_SWEEP, "--run-dir", done,
                         fragments=("the recipe changed since the sweep in", "model.hidden ([72, 36] -> [8, 4])",
                                    "optimizer.momentum (0.9 -> 0.5)", "another --run-dir"))
    assert "optimizer.lr" not in message
    assert snapshot(done) == before


def test_a_recipe_edited_between_cv_runs_is_refused_and_a_harmless_edit_is_not(capsys, cv_run, tmp_path):
    import shutil

    recipe = yaml.safe_load(HEART.read_text())
    recipe["optimizer"]["lr"] = recipe["optimizer"]["lr"] * 2
    edited = tmp_path / "heart.yaml"
    edited.write_text(yaml.safe_dump(recipe))
    before = snapshot(cv_run)
    user_error(capsys, "cv", edited, "--folds", "3", *CV_ARGS, "--run-dir", cv_run,
               fragments=("the recipe changed since the cv in", f"optimizer.lr ({recipe['optimizer']['lr'] / 2!r} -> "))
    assert snapshot(cv_run) == before
    # How often checkpoints are kept changes no fold's weights or metrics: the finished CV is summarised again.
    folder = tmp_path / "cv"
    shutil.copytree(cv_run, folder)
    result = assert_ok(run_cli("cv", HEART, "--folds", "3", *CV_ARGS, "checkpoint.keep_last=3", "--run-dir", folder))
    assert f"Recipe changed since the cv in {folder} started (allowed): checkpoint.keep_last (2 -> 3)" in result.stdout
    assert "training in" not in result.stderr
    assert json.loads((folder / "cv_summary.json").read_text()) == json.loads((cv_run / "cv_summary.json").read_text())


def test_the_cv_table_keeps_its_columns_apart_for_large_regression_metrics(capsys):
    folds = {"fold_1": {"val/loss": 0.25, "val/mae": 123456.789}, "fold_2": {"val/loss": 0.5, "val/mae": 23456.7}}
    print_table({"folds": folds, "mean": {"val/loss": 0.375, "val/mae": 73456.7445},
                 "std": {"val/loss": 0.125, "val/mae": 50000.0445}})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [
        ["fold", "val/loss", "val/mae"], ["fold_1", "0.2500", "123456.7890"], ["fold_2", "0.5000", "23456.7000"],
        ["mean±std", "0.3750±0.1250", "73456.7445±50000.0445"]]
    assert len({len(line) for line in lines}) == 1  # right-aligned columns: every line ends at the last one's edge


def test_a_sweep_killed_by_sigkill_ends_its_trials_with_a_checkpoint(tmp_path, start):
    """SIGKILL of the sweep process alone (not its children): each training gets SIGTERM from the kernel
    (its parent-death signal), saves a checkpoint and exits; none trains on as an orphan. The same
    command then resumes them."""
    folder = tmp_path / "sweep"
    command = [sys.executable, "-m", "trainwright", "sweep", _two_trial_spec(tmp_path), *LONG_TRIAL, "--run-dir",
               folder, "--parallel", "2"]
    sweep = start(command, cli_env(), name="sweep")
    trials = [folder / "trial_001", folder / "trial_002"]
    sweep.wait_for("a checkpoint of both trials", lambda: all(checkpoint_steps(t) for t in trials))
    trainings = _trainings(sweep)
    assert len(trainings) == 2
    sweep.signal(signal.SIGKILL)
    _, alive = psutil.wait_procs(trainings, timeout=120)
    assert not alive, [p.cmdline() for p in alive]
    for trial in trials:
        log = (folder / f"{trial.name}.log").read_text()
        assert "got SIGTERM; saving a checkpoint" in log and "Stopped at step" in log, log
        step = int(log.split("Stopped at step ")[1].split(":")[0])
        assert newest_valid_checkpoint(trial) == step and not (trial / "summary.json").exists()
    result = assert_ok(run_cli("sweep", _two_trial_spec(tmp_path), *LONG_TRIAL, "--run-dir", folder))
    assert_resumed(result.stdout + result.stderr, times=2)
    assert result.stdout.count("completed") == 2


@pytest.mark.parametrize("when", ["training", "starting"])
def test_a_sweep_stopped_by_sigterm_exits_75(tmp_path, start, when):
    """SIGTERM to the sweep alone, while its trainings train (they save a checkpoint) or while they are
    still starting (they end before training): exit 75, the documented code, and no training left."""
    folder = tmp_path / "sweep"
    command = [sys.executable, "-m", "trainwright", "sweep", _two_trial_spec(tmp_path), *LONG_TRIAL, "--run-dir",
               folder, "--parallel", "2"]
    sweep = start(command, cli_env(), name="sweep")
    if when == "training":
        sweep.wait_for("a checkpoint", lambda: checkpoint_steps(folder / "trial_001"))
    else:
        sweep.wait_for_text("trial_002: training in")
    trainings = _trainings(sweep)
    sweep.signal(signal.SIGTERM)
    assert sweep.finish() == 75, sweep.describe()
    assert not [p for p in trainings if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    output = sweep.output()
    assert "Traceback" not in output and "failed" not in output, output
    if when == "training":
        assert "trial_001: stopped with a checkpoint" in output
        assert "Stopped at step" in (folder / "trial_001.log").read_text()


def test_a_trial_in_use_by_another_process_is_said_and_left_alone(sweep_run, tmp_path):
    """A trial's run dir locked by another process (a `train` of it by hand, say): the sweep says so, does
    not start it, keeps its files and log, trains the others and exits 2."""
    import shutil

    from trainwright.run.directory import RunDir
    from trainwright.run.lock import RunLock

    done, _ = sweep_run
    folder = tmp_path / "sweep"
    shutil.copytree(done, folder)
    for name in ("model.safetensors", "summary.json"):
        (folder / "trial_002" / name).unlink()  # unfinished
    (folder / "trial_002.log").write_text("the log of an earlier run\n")
    before = snapshot(folder)
    with RunLock(RunDir(folder / "trial_002")):
        result = run_cli("sweep", SWEEP, *TINY_SWEEP, "--run-dir", folder, "--parallel", "2")
    assert result.returncode == 2, describe(result)
    assert f"trial_002: not trained: {folder / 'trial_002'} is in use by another process (pid {os.getpid()}" in \
        result.stderr, describe(result)
    assert "failed" not in result.stderr and "training in" not in result.stderr
    assert {k: v for k, v in snapshot(folder).items() if k.startswith("trial_002")} == \
        {k: v for k, v in before.items() if k.startswith("trial_002")}


def test_a_study_folder_in_use_by_another_command_is_refused(capsys, sweep_run):
    from trainwright.run.directory import RunDir
    from trainwright.run.lock import RunLock

    done, _ = sweep_run
    before = snapshot(done)
    with RunLock(RunDir(done)):
        user_error(capsys, "sweep", SWEEP, *TINY_SWEEP, "--run-dir", done,
                   fragments=(f"{done} is in use by another trainwright run (pid {os.getpid()}",))
    assert snapshot(done) == before

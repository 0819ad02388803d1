"""k-fold cross-validation and sweeps (issue 9): one ordinary run dir per fold or trial, a summary or
leaderboard computed from their summaries, exact resume after a kill, training-fold-only statistics,
a Slurm job array, and one message for every bad spec before any run starts."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import processes
from conftest import RECIPES, REPO, assert_ok, cli_env, no_credentials_env, run_cli, wandb_records
from reliability_helpers import HEART, HOUSE, user_error
from test_slurm import _job_env, needs_cluster
from trainwright.cli import main
from trainwright.components import build_data
from trainwright.data.folds import Fold
from trainwright.recipe import load_recipe

SWEEP = RECIPES / "sweeps" / "heart_lr_width.yaml"
# 40,000 points, 3 folds: ~420 steps per fold, a checkpoint every 50 (so a kill lands inside a fold).
CV_ARGS = ["data.num_points=40000", "trainer.epochs=1", "checkpoint.every_steps=50", "logging.wandb=false"]
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
    # The folds split the 40,000 points: each validates on its third and trains on the rest.
    for fold in folds:
        splits = json.loads((fold / "data.json").read_text())["splits"]
        assert splits["val"]["items"] in (13333, 13334) and splits["train"]["items"] + splits["val"]["items"] == 40000
    assert len({json.loads((f / "data.json").read_text())["splits"]["val"]["sha256"] for f in folds}) == 3
    summary = json.loads((cv_run / "cv_summary.json").read_text())
    accuracy = [_summary(fold)["val/accuracy"] for fold in folds]
    assert summary["folds"]["fold_2"]["val/accuracy"] == accuracy[1]
    assert summary["mean"]["val/accuracy"] == pytest.approx(statistics.fmean(accuracy))
    assert summary["std"]["val/accuracy"] == pytest.approx(statistics.pstdev(accuracy))


def test_cv_killed_during_a_fold_resumes_to_the_same_weights(cv_run, tmp_path, start):
    folder = tmp_path / "heart-cv"
    command = [sys.executable, "-m", "trainwright", "cv", HEART, "--folds", "3", *CV_ARGS, "--run-dir", folder]
    process = start(command, cli_env(), name="cv")
    process.wait_for("a checkpoint of fold 2", lambda: list((folder / "fold_2" / "checkpoints").glob("step_*")))
    process.kill()  # the driver and the fold it runs, at once
    assert not (folder / "fold_2" / "summary.json").exists() and not (folder / "fold_3").exists()
    result = assert_ok(run_cli("cv", HEART, "--folds", "3", *CV_ARGS, "--run-dir", folder))
    assert "Resuming from step" in result.stdout  # fold 2 went on from its checkpoint
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
    done, _ = sweep_run
    folder = tmp_path / "parallel"
    assert_ok(run_cli("sweep", SWEEP, *TINY_SWEEP, "--run-dir", folder, "--parallel", "2"))
    for trial in sorted(done.glob("trial_*/")):
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


@pytest.mark.parametrize(("argv", "fragments"), [
    (["--folds", "1"], ("at least 2",)),
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

"""Several named validation splits (data.val_splits: val/<name>/<metric>) and the test split scored once at the
end of the run (trainer.test_at_end: test/<metric>): a heart run reports all three splits, prefixed, in
metrics.jsonl, summary.json and its progress lines; a run SIGKILLed between validations performs the same
validations after its resume and ends bitwise equal; 2 processes report the values 1 process computes for
the same weights; a monitor may name a named split's metric, and bad names and splits are one message."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import (
    REPO,
    assert_ok,
    assert_resumed,
    cli_env,
    cli_env_with_path,
    describe,
    metrics_by_step,
    newest_valid_checkpoint,
    read_jsonl,
    run_cli,
    workflow,
)
from processes import free_port, run
from reliability_helpers import HEART, user_error
from trainwright.finished.inference import load_run
from trainwright.run.directory import RunDir
from trainwright.training.evaluation import evaluate

KILLER = REPO / "tests" / "kill_at_step.py"
SPLITS = "data.val_splits={near: {seed: 7}, far: {seed: 8, num_points: 500}}"
# heart, 1000 points: 200 test (the last), 160 val, 640 train: 10 steps per epoch, 2 epochs. Validation every 4
# steps and at epoch ends, a checkpoint every 3 steps; killed once the checkpoint of step 9 is on disk.
RUN = ["data.num_points=1000", "data.test_fraction=0.2", SPLITS, "trainer.epochs=2", "trainer.eval_every_steps=4",
       "checkpoint.every_steps=3", "checkpoint.async=false", "checkpoint.monitor=val/far/loss",
       "checkpoint.keep_best=1",
       "trainer.early_stopping={monitor: val/near/accuracy, mode: max, patience: 5}", "logging.wandb=false"]
KILLED_AT, VALIDATED = 9, [4, 8, 10, 12, 16, 20]
PREFIXES = ("val", "val/near", "val/far")


def _train(run_dir: Path, *extra: object, script: list[object] | None = None):
    return run([sys.executable, *(script or ["-m", "trainwright"]), "train", HEART, *RUN, *extra, "--run-dir", run_dir],
               cli_env())


@workflow
def killed_and_resumed(folder: Path) -> dict:
    reference = _train(folder / "reference")
    killed = _train(folder / "run", script=[KILLER, str(KILLED_AT)])
    resumable = newest_valid_checkpoint(folder / "run")
    resumed = _train(folder / "run")
    killed_at_end = _train(folder / "end", script=[KILLER, "20"])  # its last checkpoint is on disk, no summary
    resumed_at_end = _train(folder / "end")
    return {"reference": reference, "killed": killed, "resumed": resumed, "resumable": resumable,
            "dirs": (folder / "reference", folder / "run"), "killed_at_end": killed_at_end,
            "resumed_at_end": resumed_at_end, "end": folder / "end"}


def _scored(run_dir: Path) -> dict[int, dict]:
    """step -> the validation and test metrics logged at it."""
    return {step: {k: v for k, v in values.items() if k.startswith(("val/", "test/"))}
            for step, values in metrics_by_step(run_dir).items() if "val/loss" in values}


def test_a_run_with_two_named_validation_splits_and_a_test_split_reports_all_three_prefixed(killed_and_resumed):
    reference = assert_ok(killed_and_resumed["reference"])
    run_dir = killed_and_resumed["dirs"][0]
    scored = _scored(run_dir)
    assert sorted(scored) == VALIDATED, describe(reference)
    validation = {f"{prefix}/{name}" for prefix in PREFIXES for name in ("loss", "accuracy")}
    assert all(set(values) - {"test/loss", "test/accuracy"} == validation for values in scored.values())
    tests = [row for row in read_jsonl(run_dir / "metrics.jsonl") if any(k.startswith("test/") for k in row)]
    assert len(tests) == 1 and tests[0]["step"] == 20
    assert set(tests[0]) == {"step", "epoch", "test/loss", "test/accuracy"}
    losses = [scored[20][f"{prefix}/loss"] for prefix in PREFIXES] + [tests[0]["test/loss"]]
    assert len(set(losses)) == 4  # four splits, four values
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {k: summary[k] for k in scored[20]} == scored[20]  # the last validation's and the test's
    # Progress lines (stderr is no terminal): each validation names every split, the test its own line.
    lines = [line for line in reference.stderr.splitlines() if line.startswith(("validation step", "test step"))]
    assert len(lines) == len(VALIDATED) + 1, reference.stderr
    assert all(f" {prefix}/loss=" in line for line in lines[:-1] for prefix in PREFIXES)
    assert lines[-1].startswith("test step 20/20 epoch 2/2: test/loss=")
    assert "test/accuracy=" in reference.stdout.splitlines()[-2]  # "Run complete at step 20: ..., test/accuracy=..."
    best = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    saved_and_validated = (10, 12, 20)  # checkpoints every 3 steps and at epoch ends; validations at VALIDATED
    assert best["val/far/loss"] == min(scored[step]["val/far/loss"] for step in saved_and_validated)


def test_a_run_killed_between_validations_performs_the_same_validations_after_its_resume(killed_and_resumed):
    killed = killed_and_resumed["killed"]
    assert killed.returncode == -9, describe(killed)
    assert killed_and_resumed["resumable"] == KILLED_AT
    resumed = assert_ok(killed_and_resumed["resumed"])
    assert_resumed(resumed.stdout + resumed.stderr, KILLED_AT)
    reference_dir, run_dir = killed_and_resumed["dirs"]
    assert _scored(run_dir) == _scored(reference_dir)  # the same steps, splits and values, each once
    assert (run_dir / "model.safetensors").read_bytes() == (reference_dir / "model.safetensors").read_bytes()
    assert json.loads((run_dir / "summary.json").read_text())["test/loss"] == _scored(reference_dir)[20]["test/loss"]


def test_a_run_killed_once_its_last_checkpoint_is_written_scores_its_test_split_once(killed_and_resumed):
    killed = killed_and_resumed["killed_at_end"]
    assert killed.returncode == -9 and "Run complete" not in killed.stdout, describe(killed)
    resumed = assert_ok(killed_and_resumed["resumed_at_end"])
    assert_resumed(resumed.stdout + resumed.stderr, 20)
    reference_dir, end = killed_and_resumed["dirs"][0], killed_and_resumed["end"]
    assert _scored(end) == _scored(reference_dir)
    assert sum(1 for row in read_jsonl(end / "metrics.jsonl") if "test/loss" in row) == 1  # scored before that save
    summary, reference = (json.loads((d / "summary.json").read_text()) for d in (end, reference_dir))
    assert summary["test/loss"] == reference["test/loss"] and summary["test/accuracy"] == reference["test/accuracy"]


def test_test_at_end_false_leaves_the_test_split_to_eval(tmp_path):
    result = assert_ok(run_cli("train", HEART, "data.num_points=400", "data.test_fraction=0.2", "trainer.epochs=1",
                               "trainer.test_at_end=false", "logging.wandb=false", "--run-dir", tmp_path / "run"))
    assert not any(k.startswith("test/") for row in read_jsonl(tmp_path / "run" / "metrics.jsonl") for k in row)
    assert not any(k.startswith("test/") for k in json.loads((tmp_path / "run" / "summary.json").read_text()))
    assert "test/" not in result.stdout + result.stderr


@pytest.mark.slow
def test_on_two_processes_every_split_reports_what_one_process_computes_for_the_same_weights(tmp_path):
    run_dir = tmp_path / "run"
    out = assert_ok(run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                         REPO / "accelerate_configs" / "cpu_2proc.yaml", "--num_processes", "2", "--main_process_port",
                         str(free_port()), "-m", "trainwright", "train", HEART, "data.num_points=1000",
                         "data.test_fraction=0.2", SPLITS, "trainer.epochs=1", "logging.wandb=false",
                         "--run-dir", run_dir], cli_env())).stdout
    assert "world_size=2" in out, out
    summary = json.loads((run_dir / "summary.json").read_text())
    trained = load_run(RunDir(run_dir))  # the final weights, scored here by one process
    splits = {"val": trained.data.val, "test": trained.data.test,
              **{f"val/{name}": split for name, split in trained.data.val_splits.items()}}
    assert len(splits) == 4
    for prefix, split in splits.items():
        one = evaluate(trained.model, split, trained.scoring, trained.processes)
        assert summary[f"{prefix}/accuracy"] == one["accuracy"], prefix  # counts: exact
        # The sums are reduced exactly; the float32 forward of a 100-item batch may differ from a 200-item one's
        # in its last bits (measured: 9e-8 on a loss of 0.5).
        assert summary[f"{prefix}/loss"] == pytest.approx(one["loss"], rel=1e-6), prefix


@pytest.mark.parametrize(("override", "fragments"), [
    ("checkpoint.monitor=val/nera/loss", ("checkpoint.monitor: 'val/nera/loss' names no validation split 'nera'",
                                          "did you mean 'near'?", "data.val_splits names near, far")),
    ("trainer.early_stopping={patience: 2, monitor: val/far/acuracy}",
     ("trainer.early_stopping.monitor: this run reports no 'val/far/acuracy'", "did you mean 'val/far/accuracy'?")),
    ("checkpoint.monitor=test/loss", ("'test/loss' is scored once, at the end of the run", "did you mean 'val/loss'?")),
    ("data.val_splits={near: {nmu_points: 300}}",
     ("data.val_splits.near.nmu_points: unknown argument for data set 'heart'", "did you mean 'num_points'?")),
    ("data.val_splits={near: {batch_size: 8}}", ("data.val_splits.near.batch_size: a named split takes the data set's "
                                                 "arguments only",)),
    ("data.val_splits={a/b: {seed: 1}}", ("split name 'a/b' must be letters, digits",)),
])
def test_check_refuses_a_bad_split_or_monitor_with_one_message(capsys, override, fragments):
    splits = [] if override.startswith("data.val_splits") else [SPLITS]
    user_error(capsys, "check", HEART, *splits, override, fragments=fragments)


@pytest.mark.parametrize(("override", "fragments"), [
    ("data.val_splits={tiny: {num_points: 2}}", ("data.val_splits.tiny: its validation split is empty",)),
    ("data.val_splits={line: {name: linear}}", ("data.val_splits.line: its data pose another task than the "
                                                "training data (regression", "against binary, 2 classes")),
])
def test_train_refuses_an_empty_split_or_another_task_before_the_run_dir_is_made(capsys, tmp_path, override, fragments):
    user_error(capsys, "train", HEART, "data.num_points=400", "logging.wandb=false", override,
               "--run-dir", tmp_path / "run", fragments=fragments)
    assert not (tmp_path / "run").exists()


OWN_DATA = '''
from trainwright.data.bundle import DataBundle
from trainwright.data.synthetic import heart


def points(count: int = 400, seed: int = 123) -> DataBundle:
    """heart's points, the validation split also the test split (as FashionMNIST's)."""
    bundle = heart(num_points=count, seed=seed)
    return DataBundle(train=bundle.train, val=bundle.val, test=bundle.val, task=bundle.task)
'''


def test_a_data_set_of_your_own_takes_named_splits_and_its_test_split_that_is_its_validation_split(tmp_path):
    (tmp_path / "tw_test_own_data.py").write_text(OWN_DATA)
    env = cli_env_with_path(tmp_path)
    assert_ok(run_cli("train", HEART, "data={name: 'tw_test_own_data:points', batch_size: 64}", "trainer.epochs=1",
                      "data.val_splits={more: {seed: 5, count: 300}}", "logging.wandb=false", "--run-dir",
                      tmp_path / "run", env=env))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"val/more/loss", "val/more/accuracy"} <= set(summary) and summary["val/more/loss"] != summary["val/loss"]
    assert summary["test/loss"] == summary["val/loss"] and summary["test/accuracy"] == summary["val/accuracy"]

"""Experiment trackers: W&B without credentials or network falls back to offline logging, W&B errors never
stop training, TensorBoard event files (also across a resume), and a clear message without TensorBoard.

The W&B run is read back with the wandb CLI's own reader of `.wandb` files (`wandb leet inspect --json`).
Failing W&B is faked in two ways, both without network: a local server that refuses every request (the
real wandb client talking to it), and a stand-in `wandb` package on PYTHONPATH whose calls raise.
"""

from __future__ import annotations

import http.server
import json
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import yaml

import processes
from conftest import (
    WALL_CLOCK,
    WANDB_CLI,
    assert_ok,
    assert_resumed,
    assert_user_error,
    cli_env,
    describe,
    metrics_by_step,
    no_credentials_env,
    read_jsonl,
    run_cli,
    wandb_history,
    wandb_records,
    workflow,
)

WANDB_METRICS = ("train/loss", "val/loss", "val/accuracy")
WANDB_NAMING = ("logging.wandb.name=heart-small", 'logging.wandb.notes="two epochs: a check"',
                "logging.wandb.job_type=smoke")


def read_records(wandb_file: Path, env: dict[str, str]) -> list[dict]:
    return wandb_records(wandb_file, env)


def read_summary(wandb_file: Path, env: dict[str, str]) -> dict:
    result = processes.run([WANDB_CLI, "leet", "inspect", "--summary", "--json", wandb_file], env, timeout=120)
    assert result.returncode == 0, describe(result)
    return json.loads(result.stdout)


@workflow
def wandb_offline(folder: Path) -> dict:
    """Train heart briefly with logging.wandb enabled (mode auto), no API key, stdin closed, the W&B run's
    name, notes and job type set on the command line; read the W&B log."""
    home = folder / "home"
    env = no_credentials_env(home)
    run_dir = folder / "run"
    train = run_cli(
        "train", "recipes/heart.yaml", "data.num_points=1000", "trainer.epochs=2", "trainer.log_every_steps=5",
        "logging.wandb.mode=auto", *WANDB_NAMING, "--run-dir", run_dir, env=env, timeout=240,
    )
    result = {"dir": run_dir, "train": train, "home": home,
              "wandb_files": sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))}
    if train.returncode == 0 and len(result["wandb_files"]) == 1:
        result["records"] = read_records(result["wandb_files"][0], env)
        result["summary"] = read_summary(result["wandb_files"][0], env)
    return result


@pytest.fixture(scope="module")
def offline(wandb_offline):
    assert_ok(wandb_offline["train"])
    return wandb_offline


def test_wandb_without_credentials_goes_offline_without_prompting(offline):
    train = offline["train"]
    output = train.stdout + train.stderr
    sync_lines = [line for line in output.splitlines() if "wandb sync" in line]
    assert len(sync_lines) == 1, describe(train)
    assert str(offline["dir"] / "wandb") in sync_lines[0]
    # no login prompt, no W&B chatter, no traceback
    for text in ("API key", "wandb login", "Traceback", "wandb: ", "start failed"):
        assert text not in output, describe(train)
    assert "Run complete at step 24" in train.stdout  # 800 train points / 64 per batch = 12 steps per epoch
    assert offline["wandb_files"] and len(offline["wandb_files"]) == 1, sorted(offline["dir"].rglob("*"))
    assert not (offline["home"] / ".netrc").exists()


def test_wandb_history_matches_metrics_jsonl(offline):
    history = wandb_history(offline["records"])
    keys = set().union(*history.values())
    assert set(WANDB_METRICS) <= keys, sorted(keys)
    logged = [json.loads(line) for line in (offline["dir"] / "metrics.jsonl").read_text().splitlines()]
    assert logged
    for record in logged:  # every value in metrics.jsonl is in W&B's history at the same step
        row = history.get(record["step"])
        assert row is not None, f"step {record['step']} missing from W&B history"
        for key, value in record.items():
            if key != "step":
                assert row[key] == pytest.approx(value), (record, row)
    assert {record["epoch"] for record in logged} == {1, 2}  # counted from 1 (2 epochs)


def test_wandb_config_holds_the_recipe(offline):
    summary = offline["summary"]
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    assert summary["project"] == "trainwright"
    recipe = yaml.safe_load((offline["dir"] / "recipe.yaml").read_text())
    config = {k: v for k, v in summary["config"].items() if not k.startswith("_")}
    model_summary = config.pop("model_summary")  # beside the recipe: the model's size
    assert config == recipe
    assert model_summary == json.loads((offline["dir"] / "summary.json").read_text())["model_summary"]
    assert model_summary["parameters"] == model_summary["trainable"] == 2881
    assert config["name"] == "heart"
    assert config["optimizer"]["lr"] == 0.01
    assert config["data"]["num_points"] == 1000
    # the final summary carries the last validation metrics of the run
    final = json.loads((offline["dir"] / "summary.json").read_text())
    assert summary["summary"]["val/accuracy"] == pytest.approx(final["val/accuracy"])
    assert summary["step"] == final["step"]


def test_wandb_run_is_named_as_the_recipe_says(offline):
    runs = [record["run"] for record in offline["records"] if record["type"] == "run"]
    assert runs
    for run in runs:
        assert (run["display_name"], run["notes"], run["job_type"]) == ("heart-small", "two epochs: a check", "smoke")
    recipe = yaml.safe_load((offline["dir"] / "recipe.yaml").read_text())["logging"]["wandb"]
    assert (recipe["name"], recipe["notes"], recipe["job_type"]) == ("heart-small", "two epochs: a check", "smoke")


def test_wandb_run_id_is_kept_in_the_run_dir(offline):
    run_id = (offline["dir"] / "wandb_run_id.txt").read_text().strip()
    assert run_id
    assert offline["summary"]["run_id"] == run_id
    assert offline["wandb_files"][0].name == f"run-{run_id}.wandb"


# --- W&B cannot start online: offline instead -------------------------------------------------------

TINY_WANDB = ["data.num_points=1000", "trainer.epochs=2", "trainer.log_every_steps=5"]  # 12 steps per epoch


class _RefusingServer(http.server.BaseHTTPRequestHandler):
    """A W&B server that refuses every request, as one does for a key it does not know."""

    def _refuse(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"errors": [{"message": "test server: unknown API key"}]}')

    do_GET = do_POST = do_PUT = _refuse

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def refusing_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("why", ["no_api_key", "server_refuses"])
def test_wandb_online_that_cannot_start_falls_back_to_offline(tmp_path, refusing_server, why):
    """logging.wandb.mode=online: with no API key, or with a key the (local) server refuses, the run logs to
    an offline W&B run instead, with a warning, and trains to the end."""
    changes = {} if why == "no_api_key" else {"WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": refusing_server}
    env = no_credentials_env(tmp_path / "home", **changes)
    run_dir = tmp_path / "run"
    result = assert_ok(run_cli("train", "recipes/heart.yaml", *TINY_WANDB, "logging.wandb={mode: online}",
                               "--run-dir", run_dir, env=env, timeout=240))
    output = result.stdout + result.stderr
    assert "Run complete at step 24" in result.stdout
    assert "trainwright: W&B online start failed (" in output and "trying offline" in output, output
    assert f"trainwright: W&B is logging offline to {run_dir / 'wandb'}" in output, output
    assert "W&B offline start failed" not in output and "W&B is off" not in output, output
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, sorted(run_dir.rglob("*"))
    history = wandb_history(read_records(files[0], env))
    expected = metrics_by_step(run_dir, skip=WALL_CLOCK)
    assert sorted(history) == sorted(expected)
    for step, values in expected.items():
        assert {k: history[step][k] for k in values} == pytest.approx(values), step


# --- W&B errors never stop training -----------------------------------------------------------------

FAKE_WANDB = '''
    """A stand-in for the wandb package: records every call in $FAKE_WANDB_CALLS and raises where
    $FAKE_WANDB_FAIL says: "init" (every start), "log" (the 3rd log call), "finish"."""
    import json
    import os

    FAIL = os.environ["FAKE_WANDB_FAIL"]


    def _record(call, **data):
        with open(os.environ["FAKE_WANDB_CALLS"], "a") as file:
            file.write(json.dumps({"call": call, **data}) + "\\n")


    class Settings:
        def __init__(self, **kwargs):
            self.kwargs = kwargs


    class Run:
        def __init__(self):
            self.logged = 0

        def log(self, metrics, step=None):
            self.logged += 1
            _record("log", step=step)
            if FAIL == "log" and self.logged == 3:
                raise ConnectionResetError("fake W&B: connection reset by peer")

        def finish(self):
            _record("finish")
            if FAIL == "finish":
                raise RuntimeError("fake W&B: cannot finish")


    def init(**kwargs):
        _record("init", mode=kwargs.get("mode"), id=kwargs.get("id"))
        if FAIL == "init":
            raise RuntimeError(f"fake W&B: cannot start in {kwargs.get('mode')} mode")
        return Run()


    def teardown(exit_code=None):
        _record("teardown")
'''

WANDB_FAILURES = {  # what fails -> the warning
    "init": "W&B offline start failed (fake W&B: cannot start in offline mode); W&B is off for this run",
    "log": "W&B logging failed (fake W&B: connection reset by peer); W&B is off for the rest of this run",
    "finish": "W&B finish failed (fake W&B: cannot finish)",
}


@pytest.mark.parametrize("failing", sorted(WANDB_FAILURES))
def test_a_wandb_error_never_stops_training(tmp_path, failing):
    package = tmp_path / "fake" / "wandb"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(FAKE_WANDB))
    calls_file = tmp_path / "calls.jsonl"
    env = cli_env(PYTHONPATH=str(tmp_path / "fake"), FAKE_WANDB_FAIL=failing, FAKE_WANDB_CALLS=str(calls_file))
    run_dir = tmp_path / "run"
    result = assert_ok(run_cli("train", "recipes/heart.yaml", *TINY_WANDB, "logging.wandb={mode: online}",
                               "--run-dir", run_dir, env=env))
    assert f"trainwright: {WANDB_FAILURES[failing]}" in result.stderr, describe(result)
    assert "Run complete at step 24" in result.stdout
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    # metrics.jsonl has every step however W&B fared
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if "train/loss" in r] == [5, 10, 15, 20]
    assert [r["step"] for r in records if "val/loss" in r] == [12, 24]

    calls = [c for c in read_jsonl(calls_file) if c["call"] != "teardown"]
    if failing == "init":  # online, then offline: both fail, and W&B is not called again
        assert [(c["call"], c.get("mode")) for c in calls] == [("init", "online"), ("init", "offline")]
    elif failing == "log":  # the third call fails, and W&B is not called again (not even finish)
        assert [c["call"] for c in calls] == ["init", "log", "log", "log"]
    else:  # every record was logged, then finish failed
        assert [c["call"] for c in calls] == ["init", *["log"] * len(records), "finish"]
        assert [c["step"] for c in calls[1:-1]] == [r["step"] for r in records]


# --- TensorBoard ------------------------------------------------------------------------------------


@workflow
def tensorboard_resume(folder: Path) -> dict:
    """TensorBoard on a run that goes on from an older checkpoint: the first run logs up to step 100, the
    second resumes from step 50 (--resume) and logs 60, 70, ... again, to the end (200)."""
    run_dir = folder / "run"
    common = ["data.num_points=8000", "trainer.epochs=2", "trainer.log_every_steps=10", "checkpoint.every_steps=25",
              "checkpoint.keep_last=5", "logging.wandb=false", "logging.tensorboard=true"]
    first = run_cli("train", "recipes/heart.yaml", *common, "trainer.max_steps=100", "--run-dir", run_dir)
    second = None
    if first.returncode == 0:
        second = run_cli("train", "recipes/heart.yaml", *common, "--run-dir", run_dir,
                         "--resume", run_dir / "checkpoints" / "step_00000050")
    return {"dir": run_dir, "first": first, "second": second}


def _tensorboard_scalars(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"))  # what TensorBoard shows
    accumulator.Reload()
    return accumulator


def test_tensorboard_event_files(tensorboard_resume):
    assert_ok(tensorboard_resume["first"])
    run_dir = tensorboard_resume["dir"]
    assert sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")), sorted(run_dir.rglob("*"))
    tags = set(_tensorboard_scalars(run_dir).Tags()["scalars"])
    sequence_only = ("perf/tokens_per_second", "perf/mfu")  # heart is no sequence task
    assert {*WANDB_METRICS, "lr", *(key for key in WALL_CLOCK if key not in sequence_only)} <= tags, tags


def test_tensorboard_after_a_resume_shows_every_step_once(tensorboard_resume):
    assert_ok(tensorboard_resume["first"])
    result = assert_ok(tensorboard_resume["second"])
    assert_resumed(result.stdout + result.stderr, 50)
    run_dir = tensorboard_resume["dir"]
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    accumulator = _tensorboard_scalars(run_dir)
    logged = metrics_by_step(run_dir)
    assert [s for s, v in logged.items() if "train/loss" in v] == list(range(10, 201, 10))
    for tag in ("train/loss", "lr", "val/loss", "val/accuracy"):
        expected = [(step, values[tag]) for step, values in sorted(logged.items()) if tag in values]
        shown = [(event.step, event.value) for event in accumulator.Scalars(tag)]
        assert [s for s, _ in shown] == [s for s, _ in expected], tag  # each step once, in order
        assert [v for _, v in shown] == pytest.approx([v for _, v in expected], rel=1e-6), tag


NO_TENSORBOARD = '''
    """Make TensorBoard look uninstalled: the finder of installed packages no longer finds it."""
    import sys
    from importlib.machinery import PathFinder


    class HideTensorBoard:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "tensorboard" or name.startswith("tensorboard."):
                return None
            return PathFinder.find_spec(name, path, target)

        def __getattr__(self, name):
            return getattr(PathFinder, name)


    sys.meta_path[:] = [HideTensorBoard() if finder is PathFinder else finder for finder in sys.meta_path]
'''


@workflow
def tensorboard_missing(folder: Path):
    (folder / "site").mkdir()
    (folder / "site" / "sitecustomize.py").write_text(textwrap.dedent(NO_TENSORBOARD))
    env = cli_env(PYTHONPATH=str(folder / "site"))
    hidden = processes.run(
        [
            sys.executable,
            "-c",
            "import importlib.util; print(importlib.util.find_spec('tensorboard')); import tensorboard",
        ],
        env,
    )
    train = run_cli("train", "recipes/heart.yaml", "data.num_points=200", "trainer.epochs=1", "logging.wandb=false",
                    "logging.tensorboard=true", "--run-dir", folder / "run", env=env)
    return hidden, train


def test_tensorboard_missing_is_one_clear_error(tensorboard_missing):
    hidden, train = tensorboard_missing
    assert hidden.stdout == "None\n" and "No module named 'tensorboard'" in hidden.stderr, describe(hidden)
    assert_user_error(train.returncode, train.stderr, "logging.tensorboard is true but TensorBoard is not installed",
                      "pip install 'trainwright[tensorboard]'", "logging.tensorboard=false")

"""Experiment trackers: W&B without credentials falls back to offline logging; TensorBoard event files.

The W&B run is read back with the wandb CLI's own reader of `.wandb` files (`wandb leet inspect --json`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import assert_ok, workflow, cli_env, describe, run_cli

WANDB_CLI = Path(sys.executable).parent / "wandb"
WANDB_METRICS = ("train/loss", "val/loss", "val/accuracy")


def no_credentials_env(home: Path) -> dict[str, str]:
    """No API key anywhere: no WANDB_* variables, and a fresh HOME (so no ~/.netrc, no ~/.config/wandb)."""
    env = {k: v for k, v in cli_env().items() if not k.startswith("WANDB_") and k not in ("NETRC", "XDG_CONFIG_HOME")}
    env["HOME"] = str(home)
    return env


def read_records(wandb_file: Path, env: dict[str, str]) -> list[dict]:
    result = subprocess.run([WANDB_CLI, "leet", "inspect", "--json", wandb_file], env=env, capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, describe(result)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def read_summary(wandb_file: Path, env: dict[str, str]) -> dict:
    result = subprocess.run([WANDB_CLI, "leet", "inspect", "--summary", "--json", wandb_file], env=env,
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, describe(result)
    return json.loads(result.stdout)


@workflow
def wandb_offline(folder: Path) -> dict:
    """Train heart briefly with logging.wandb enabled (mode auto), no API key, stdin closed; read the W&B log."""
    home = folder / "home"
    home.mkdir()
    env = no_credentials_env(home)
    run_dir = folder / "run"
    train = run_cli(
        "train", "recipes/heart.yaml", "data.num_points=1000", "trainer.epochs=2", "trainer.log_every_steps=5",
        "logging.wandb=true", "--run-dir", run_dir, env=env, timeout=240,
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
    history: dict[int, dict] = {}
    for record in offline["records"]:
        if record["type"] == "history":
            history.setdefault(record["history"]["step"]["num"], {}).update(record["history"]["item"])
    keys = set().union(*history.values())
    assert set(WANDB_METRICS) <= keys, sorted(keys)
    logged = [json.loads(line) for line in (offline["dir"] / "metrics.jsonl").read_text().splitlines()]
    assert logged
    for record in logged:  # every value in metrics.jsonl is in W&B's history at the same step
        row = history.get(record["step"])
        assert row is not None, f"step {record['step']} missing from W&B history"
        for key, value in record.items():
            if key not in ("step", "epoch"):
                assert row[key] == pytest.approx(value), (record, row)


def test_wandb_config_holds_the_recipe(offline):
    summary = offline["summary"]
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    assert summary["project"] == "trainwright"
    recipe = yaml.safe_load((offline["dir"] / "recipe.yaml").read_text())
    config = {k: v for k, v in summary["config"].items() if not k.startswith("_")}
    assert config == recipe
    assert config["name"] == "heart"
    assert config["optimizer"]["lr"] == 0.01
    assert config["data"]["num_points"] == 1000
    # the final summary carries the last validation metrics of the run
    final = json.loads((offline["dir"] / "summary.json").read_text())
    assert summary["summary"]["val/accuracy"] == pytest.approx(final["val/accuracy"])
    assert summary["step"] == final["step"]


def test_wandb_run_id_is_kept_in_the_run_dir(offline):
    run_id = (offline["dir"] / "wandb_run_id.txt").read_text().strip()
    assert run_id
    assert offline["summary"]["run_id"] == run_id
    assert offline["wandb_files"][0].name == f"run-{run_id}.wandb"


# --- TensorBoard ------------------------------------------------------------------------------------


@workflow
def tensorboard_run(folder: Path) -> dict:
    run_dir = folder / "run"
    train = run_cli("train", "recipes/heart.yaml", "data.num_points=800", "trainer.epochs=2",
                    "trainer.log_every_steps=2", "logging.wandb=false", "logging.tensorboard=true",
                    "--run-dir", run_dir)
    return {"dir": run_dir, "train": train}


def test_tensorboard_event_files(tensorboard_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert_ok(tensorboard_run["train"])
    run_dir = tensorboard_run["dir"]
    events = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events, sorted(run_dir.rglob("*"))
    accumulator = EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert set(WANDB_METRICS) <= tags, tags
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [(r["step"], r["val/loss"]) for r in logged if "val/loss" in r]
    scalars = [(e.step, e.value) for e in accumulator.Scalars("val/loss")]
    assert [s for s, _ in scalars] == [s for s, _ in val]
    assert [v for _, v in scalars] == pytest.approx([v for _, v in val], rel=1e-6)

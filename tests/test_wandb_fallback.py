"""W&B with an API key but no network: a short, bounded wait (logging.wandb.init_timeout), then the run
is recorded offline under the same run id (no 'run ID in use', nothing lost)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from conftest import RECIPES, assert_ok, cli_env, describe, run_cli, workflow


def closed_port() -> int:
    """A local port nothing listens on (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@workflow
def wandb_unreachable(folder: Path) -> dict:
    home = folder / "home"
    home.mkdir()
    env = cli_env(WANDB_API_KEY="f" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}", HOME=str(home),
                  WANDB_MODE=None, WANDB_DIR=None)
    run_dir = folder / "run"
    train = run_cli("train", "recipes/heart.yaml", "data.num_points=400", "trainer.epochs=2", "logging.wandb.mode=auto",
                    "logging.wandb.init_timeout=3", "--run-dir", run_dir, env=env, timeout=240)
    return {"dir": run_dir, "train": train}


def test_an_unreachable_wandb_falls_back_to_an_offline_run_with_the_same_id(wandb_unreachable):
    train, run_dir = assert_ok(wandb_unreachable["train"]), wandb_unreachable["dir"]
    output = train.stdout + train.stderr
    assert "W&B online start failed" in train.stderr and "trying offline" in train.stderr, describe(train)
    assert "in use" not in output and "W&B is off" not in output, describe(train)
    assert "Run complete at step 10" in train.stdout
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    offline = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1, sorted(p.name for p in (run_dir / "wandb").iterdir())
    records = offline[0] / f"run-{run_id}.wandb"
    assert records.is_file() and records.stat().st_size > 1000
    assert f"wandb sync {run_dir / 'wandb'}/offline-run-*" in train.stderr


def test_the_wait_is_configurable_and_checked():
    from trainwright.errors import UserError
    from trainwright.recipe import load_recipe

    assert load_recipe(RECIPES / "heart.yaml").logging.wandb.init_timeout == 10
    assert load_recipe(RECIPES / "heart.yaml", ["logging.wandb.init_timeout=2.5"]).logging.wandb.init_timeout == 2.5
    with pytest.raises(UserError, match="logging.wandb.init_timeout"):
        load_recipe(RECIPES / "heart.yaml", ["logging.wandb.init_timeout=0"])

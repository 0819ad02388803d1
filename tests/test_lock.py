"""Two trainers never share a run dir: the run-dir lock (runlock.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, assert_user_error, cli_env, describe
from reliability_helpers import HEART, TINY, snapshot, train_ok, user_error
from trainwright.rundir import RunDir
from trainwright.runlock import RunLock

CPU_2PROC = REPO / "accelerate_configs" / "cpu_2proc.yaml"


def lock_file(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.trainwright-lock"


def test_a_second_train_on_a_locked_run_dir_is_refused_naming_the_holder(capsys, tmp_path):
    run_dir = tmp_path / "run"
    with RunLock(RunDir(run_dir)):
        record = lock_file(run_dir).read_text()
        message = user_error(capsys, "train", HEART, *TINY, "--run-dir", run_dir,
                             fragments=(str(run_dir), "in use", f"pid {os.getpid()}", socket.gethostname(), "since"))
        assert not run_dir.exists()  # nothing was made or planned under a lock held by another
        assert lock_file(run_dir).read_text() == record  # the holder's record is untouched
    assert "another --run-dir" in message
    assert not lock_file(run_dir).exists()  # released


def test_restart_refuses_a_locked_run_dir_and_moves_nothing(capsys, tmp_path):
    run_dir = tmp_path / "run"
    train_ok(capsys, HEART, *TINY, "--run-dir", run_dir)
    before = snapshot(run_dir)
    with RunLock(RunDir(run_dir)):
        user_error(capsys, "train", HEART, *TINY, "--run-dir", run_dir, "--restart", fragments=("in use",))
    assert snapshot(run_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_the_lock_is_released_after_success_and_after_an_error(capsys, tmp_path):
    train_ok(capsys, HEART, *TINY, "--run-dir", tmp_path / "run")
    user_error(capsys, "train", HEART, *TINY, "data.batch_size=512", "--run-dir", tmp_path / "other")  # > 320 points
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no lock files, no half-made run dir


def test_folders_made_for_the_lock_are_removed_when_the_run_cannot_start(capsys, tmp_path):
    user_error(capsys, "train", HEART, *TINY, "data.batch_size=512", "--run-dir", tmp_path / "new" / "deeper" / "run")
    assert list(tmp_path.iterdir()) == []


def test_the_lock_of_a_dead_process_is_taken_over_with_a_message(capsys, tmp_path):
    run_dir = tmp_path / "run"
    dead = {"pid": 999999, "host": socket.gethostname(), "since": "2020-01-01 00:00:00", "command": "trainwright train"}
    lock_file(run_dir).write_text(json.dumps(dead))  # what a SIGKILLed holder leaves: a record, no lock
    out, err = train_ok(capsys, HEART, *TINY, "--run-dir", run_dir)
    assert "taking over the lock" in err and "pid 999999" in err
    assert "Run complete" in out
    assert not lock_file(run_dir).exists()


def test_a_fresh_record_from_another_machine_is_refused(capsys, tmp_path):
    """Where the file system's locks do not reach across machines, a holder on another machine keeps
    its record fresh; a command elsewhere must not take it over."""
    run_dir = tmp_path / "run"
    other = {"pid": 4242, "host": "another-node", "since": "2026-01-01 10:00:00", "command": "trainwright train"}
    lock_file(run_dir).write_text(json.dumps(other))
    user_error(capsys, "train", HEART, *TINY, "--run-dir", run_dir,
               fragments=("in use", "another-node", "delete", str(lock_file(run_dir))))
    assert not run_dir.exists()
    old = time.time() - 3600  # a record an hour old is from a holder that is gone
    os.utime(lock_file(run_dir), (old, old))
    out, err = train_ok(capsys, HEART, *TINY, "--run-dir", run_dir)
    assert "taking over the lock" in err and "another-node" in err


def test_two_real_trainers_on_one_run_dir(tmp_path):
    """A long run holds the lock; a second command, and a --restart, are refused and change nothing;
    the first run is unaffected and stops cleanly."""
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "trainwright", "train", str(HEART), "data.num_points=40000", "trainer.epochs=5",
            "logging.wandb=false", "checkpoint.every_steps=50", "--run-dir", str(run_dir)]
    first = subprocess.Popen(args, cwd=REPO, env=cli_env(), text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints").is_dir():
            assert first.poll() is None, first.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for extra in ([], ["--restart"]):
            second = subprocess.run(args + extra, cwd=REPO, env=cli_env(), capture_output=True, text=True,
                                    timeout=120, stdin=subprocess.DEVNULL)
            assert_user_error(second.returncode, second.stderr, "in use", f"pid {first.pid}")
            assert sorted(p.name for p in tmp_path.iterdir()) == [".run.trainwright-lock", "run"]
        first.send_signal(signal.SIGTERM)
        output, _ = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 75, output
    assert "Stopped at step" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_accelerate_launch_against_a_locked_run_dir_ends_every_process(tmp_path):
    """Rank 0 takes the lock; when it is refused, rank 0 exits with the message and the launcher ends the
    other rank (nothing hangs). The launcher's failure report, which ends its output, names the message."""
    run_dir = tmp_path / "run"
    with RunLock(RunDir(run_dir)):
        result = subprocess.run(
            [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_2PROC), "-m", "trainwright",
             "train", str(HEART), *TINY, "--run-dir", str(run_dir)],
            cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
        )
    assert result.returncode != 0, describe(result)
    assert not run_dir.exists()
    stderr = result.stderr
    assert "ChildFailedError" in stderr, describe(result)  # the launcher's own report (cannot be avoided)
    last_lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("=")][-1]
    assert "trainwright: error:" in last_lines and "in use" in last_lines, describe(result)


@pytest.mark.parametrize("held", [False, True])
def test_python_api_takes_the_lock_too(tmp_path, held):
    from trainwright.errors import UserError
    from trainwright.recipe import load_recipe
    from trainwright.training import train

    recipe = load_recipe(HEART, TINY)
    run_dir = tmp_path / "run"
    if not held:
        assert train(recipe, run_dir).status == "completed"
        return
    with RunLock(RunDir(run_dir)), pytest.raises(UserError, match="in use"):
        train(recipe, run_dir)


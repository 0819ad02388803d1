"""Two trainers never share a run dir: the run-dir lock (runlock.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, assert_user_error, cli_env, cli_env_with_path, describe
from reliability_helpers import HEART, TINY, snapshot, train_ok, user_error
from trainwright.run.directory import RunDir
from trainwright.run.lock import RunLock

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
    from trainwright.training.start import train

    recipe = load_recipe(HEART, TINY)
    run_dir = tmp_path / "run"
    if not held:
        assert train(recipe, run_dir).status == "completed"
        return
    with RunLock(RunDir(run_dir)), pytest.raises(UserError, match="in use"):
        train(recipe, run_dir)



# --- the lock ends with its holder, even while children it forked live on (issue 19) ---------------------

HOLD_FORK_AND_DIE = """
import os, signal, sys, time
from pathlib import Path
from trainwright.run.directory import RunDir
from trainwright.run.lock import RunLock

RunLock(RunDir(Path(sys.argv[1]))).__enter__()
child = os.fork()
if child == 0:  # outlives its parent, as a DataLoader worker does for a moment after a SIGKILL
    os.dup2(os.open(os.devnull, os.O_RDWR), 1)
    os.dup2(os.open(os.devnull, os.O_RDWR), 2)
    time.sleep(60)
    os._exit(0)
print(os.getpid(), child, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"


def test_a_forked_child_of_a_killed_holder_does_not_keep_the_lock(capsys, tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.run([sys.executable, "-c", HOLD_FORK_AND_DIE, str(run_dir)], env=cli_env(), capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert holder.returncode == -signal.SIGKILL, describe(holder)
    holder_pid, child = map(int, holder.stdout.split())
    try:
        assert _running(child)  # it has the lock file open (fork copied the descriptor)
        with RunLock(RunDir(run_dir)):
            assert _running(child)
        err = capsys.readouterr().err
        assert f"taking over the lock of {run_dir} from pid {holder_pid}" in err and "ended without releasing it" in err
        assert not lock_file(run_dir).exists()
    finally:
        os.kill(child, signal.SIGKILL)


SLOW_ITEMS = '''
import os, time

import torch
from torch.utils.data import Dataset, get_worker_info

from trainwright.data.bundle import DataBundle, Task


class Items(Dataset):
    """Points served one at a time, slowly by DataLoader workers; a worker that reads one leaves a file named
    by its pid."""

    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.points, self.labels = torch.randn(n, 2, generator=g), torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.points)

    def __getitem__(self, index):
        if get_worker_info() is not None:
            open(os.path.join(os.environ["SERVED_BY"], str(os.getpid())), "w").close()
            time.sleep(3)
        return self.points[index], self.labels[index]


def slow_items(num_points: int = 64) -> DataBundle:
    return DataBundle(train=Items(num_points), val=Items(8), task=Task("multiclass", class_names=("a", "b")))
'''


def test_a_run_killed_while_its_dataloader_workers_read_can_be_run_again_at_once(tmp_path):
    """The workers (forked, and still in __getitem__ for seconds after their parent's SIGKILL) must not keep
    the run dir locked: the next command gets it at once and names the dead holder only as gone."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "slow_items.py").write_text(SLOW_ITEMS)
    served_by = tmp_path / "served_by"
    served_by.mkdir()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: slow\ndata: {name: 'slow_items:slow_items', batch_size: 8, num_workers: 2}\n"
        "model: {name: mlp, in_features: 2, hidden: [4], out_features: 2}\nloss: {name: cross_entropy}\n"
        "optimizer: {name: sgd, lr: 0.1}\nlogging: {wandb: false}\n"
    )
    run_dir = tmp_path / "run"
    env = cli_env_with_path(code, SERVED_BY=str(served_by))
    args = [sys.executable, "-m", "trainwright", "train", str(recipe), "--run-dir", str(run_dir)]
    main = subprocess.Popen(args, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not workers:
            assert main.poll() is None, main.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
            workers = [int(p.name) for p in served_by.iterdir()]
        main.kill()
        main.wait(timeout=60)
        assert any(_running(pid) for pid in workers)  # still reading their item
        second = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path\n"
                                 "from trainwright.run.directory import RunDir\n"
                                 "from trainwright.run.lock import RunLock\n"
                                 "with RunLock(RunDir(Path(sys.argv[1]))): print('locked')", str(run_dir)],
                                env=cli_env(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert any(_running(pid) for pid in workers)
    finally:
        main.kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert second.returncode == 0 and "locked" in second.stdout, describe(second)
    assert f"pid {main.pid}" in second.stderr and "ended without releasing it" in second.stderr, describe(second)


def test_a_held_lock_whose_recorded_holder_is_dead_is_not_said_to_be_that_holders(capsys, tmp_path):
    """The refusal names a holder only where it is alive: a lock held by some other process (here this
    test, under a dead pid's record) is said to be so."""
    import fcntl

    run_dir = tmp_path / "run"
    dead = {"pid": 999999, "host": socket.gethostname(), "since": "2020-01-01 00:00:00", "command": "trainwright train"}
    lock_file(run_dir).write_text(json.dumps(dead))
    with lock_file(run_dir).open() as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        message = user_error(capsys, "train", HEART, *TINY, "--run-dir", run_dir,
                             fragments=("in use", "not by its recorded holder", "pid 999999", "no longer running",
                                        str(lock_file(run_dir))))
    assert "another trainwright run (pid 999999" not in message
    assert json.loads(lock_file(run_dir).read_text()) == dead


def test_a_record_naming_a_live_process_that_does_not_hold_the_lock_is_taken_over_truthfully(capsys, tmp_path):
    """pid 1 is alive (here it is not the holder: no one holds the lock): it did not 'end'."""
    run_dir = tmp_path / "run"
    alive = {"pid": 1, "host": socket.gethostname(), "since": "2020-01-01 00:00:00", "command": "trainwright train"}
    lock_file(run_dir).write_text(json.dumps(alive))
    _, err = train_ok(capsys, HEART, *TINY, "--run-dir", run_dir)
    assert "taking over the lock" in err and "pid 1 on host" in err and "no longer holds it" in err, err
    assert "ended" not in err, err


@pytest.mark.parametrize("target", ["a file", "nothing"])
def test_a_lock_file_that_is_a_symbolic_link_is_refused_and_its_target_untouched(capsys, tmp_path, target):
    """The lock file's folder may be shared: a link there must not make trainwright write a user's file
    (or make one where a dangling link points)."""
    run_dir = tmp_path / "runs" / "run"
    run_dir.parent.mkdir()
    users = tmp_path / "users_file.txt"
    if target == "a file":
        users.write_text("precious\n")
    lock_file(run_dir).symlink_to(users)
    user_error(capsys, "train", HEART, *TINY, "--run-dir", run_dir,
               fragments=(str(lock_file(run_dir)), "symbolic link", str(users), "remove the link"))
    if target == "a file":
        assert users.read_text() == "precious\n"
    else:
        assert not users.exists()
    assert lock_file(run_dir).is_symlink() and not run_dir.exists()


def test_a_record_naming_this_very_process_is_taken_over_as_such(capsys, tmp_path):
    """A container started again gives its main process the same pid (1) as the killed one had."""
    run_dir = tmp_path / "run"
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": "2020-01-01 00:00:00", "command": "x"}
    lock_file(run_dir).write_text(json.dumps(record))
    with RunLock(RunDir(run_dir)):
        pass
    err = capsys.readouterr().err
    assert f"pid {os.getpid()} is this command's now" in err and "ended" not in err, err

"""Environment errors are one message each and lose nothing: read-only folders, a run dir under a
file, a full disk during a checkpoint or the final write, and --restart in awkward places."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

import trainwright.checkpoint.full
import trainwright.checkpoint.weights
import trainwright.run.directory
from conftest import assert_resumed
from reliability_helpers import HEART, TINY, call, read_only, snapshot, train_ok, user_error


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# --- folders that cannot be written -------------------------------------------------------------------


def test_a_read_only_run_dir_is_one_message_and_stays_as_it_was(capsys, tmp_path):
    run_dir = tmp_path / "run"
    train_ok(capsys, HEART, *TINY, "--run-dir", run_dir)
    before = snapshot(run_dir)
    with read_only(run_dir):
        user_error(capsys, "train", HEART, *TINY, "trainer.epochs=2", "--run-dir", run_dir,
                   fragments=(str(run_dir), "not writable"))
    assert snapshot(run_dir) == before


def test_a_read_only_parent_is_one_message(capsys, tmp_path):
    parent = tmp_path / "shared"
    parent.mkdir()
    with read_only(parent):
        user_error(capsys, "train", HEART, *TINY, "--run-dir", parent / "run", fragments=(str(parent), "not writable"))
    assert list(parent.iterdir()) == []


def test_a_run_dir_under_a_regular_file_is_one_message(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    user_error(capsys, "train", HEART, *TINY, "--run-dir", tmp_path / "notes.txt" / "run",
               fragments=(str(tmp_path / "notes.txt"), "is a file"))
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# --- a full disk --------------------------------------------------------------------------------------


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(capsys, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    args = [HEART, *TINY, "trainer.epochs=3", "--run-dir", run_dir]  # a checkpoint per epoch: steps 5, 10, 15
    saves = {"count": 0}
    real = trainwright.checkpoint.full.FullState.write

    def second_save_fails(self, *a, **k):
        saves["count"] += 1
        return no_space() if saves["count"] == 2 else real(self, *a, **k)

    monkeypatch.setattr(trainwright.checkpoint.full.FullState, "write", second_save_fails)
    code, out, err = call(capsys, "train", *args)
    assert code == 2 and err.count("trainwright: error:") == 1 and "Traceback" not in err
    assert "cannot write a checkpoint at step 10: No space left on device" in err
    assert "step_00000005, is kept" in err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest.json", "step_00000005"]
    monkeypatch.undo()  # space was freed
    out, err = train_ok(capsys, *args)
    assert_resumed(out + err, 5)
    assert "Run complete at step 15" in out


def test_a_full_disk_during_the_final_write_is_one_message_and_the_run_completes_later(capsys, tmp_path,
                                                                                         monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setattr(trainwright.checkpoint.weights, "save_weights", no_space)
    code, out, err = call(capsys, "train", HEART, *TINY, "--run-dir", run_dir)
    assert code == 2 and err.count("trainwright: error:") == 1 and "Traceback" not in err
    assert "cannot write the final weights and summary at step 5" in err and "step_00000005, is kept" in err
    assert "Run complete" not in out
    assert not (run_dir / "model.safetensors").exists() and not (run_dir / "summary.json").exists()
    monkeypatch.undo()
    out, _ = train_ok(capsys, HEART, *TINY, "--run-dir", run_dir)
    assert "Run complete at step 5" in out and (run_dir / "model.safetensors").is_file()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_a_really_full_disk(capsys, tmp_path):
    """The same on a 2 MB tmpfs: safetensors reports ENOSPC as its own error type."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        run_dir = disk / "run"
        args = [HEART, *TINY, "model.hidden=[300, 300]", "trainer.epochs=3", "--run-dir", run_dir]
        code, out, err = call(capsys, "train", *args)
        assert code == 2 and err.count("trainwright: error:") == 1 and "Traceback" not in err, err
        assert "No space left on device" in err and "is kept" in err
        assert not list((run_dir / "checkpoints").glob(".tmp-*"))
        kept = sorted((run_dir / "checkpoints").glob("step_*"))
        assert kept and str(kept[-1]) in err
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# --- --restart ------------------------------------------------------------------------------------


def test_restart_of_the_current_folder_is_refused(capsys, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    train_ok(capsys, HEART, *TINY, "--run-dir", run_dir)
    before = snapshot(run_dir)
    monkeypatch.chdir(run_dir)
    user_error(capsys, "train", HEART, *TINY, "--run-dir", ".", "--restart", fragments=("--restart", "current folder"))
    monkeypatch.chdir(tmp_path)
    assert snapshot(run_dir) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_two_restarts_within_a_second_keep_both_old_runs(capsys, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setattr(trainwright.run.directory.time, "strftime", lambda fmt, *a: "20260101-000000")
    train_ok(capsys, HEART, *TINY, "--run-dir", run_dir)
    for _ in range(2):
        out, _ = train_ok(capsys, HEART, *TINY, "--run-dir", run_dir, "--restart")
        assert "previous run was moved to" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.old-20260101-000000", "run.old-20260101-000000-2"]


def test_restart_with_resume_moves_nothing(capsys, tmp_path):
    run_dir = tmp_path / "run"
    train_ok(capsys, HEART, *TINY, "--run-dir", run_dir)
    before = snapshot(run_dir)
    user_error(capsys, "train", HEART, *TINY, "--run-dir", run_dir, "--restart", "--resume",
               run_dir / "checkpoints" / "step_00000005", fragments=("--restart", "--resume"))
    assert snapshot(run_dir) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_two_resumes_of_an_older_checkpoint_within_a_second_keep_every_later_checkpoint(capsys, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setattr(trainwright.run.directory.time, "strftime", lambda fmt, *a: "20260101-000000")
    train_ok(capsys, HEART, *TINY, "trainer.epochs=3", "--run-dir", run_dir)  # checkpoints at steps 10 and 15
    for _ in range(2):
        train_ok(capsys, HEART, *TINY, "trainer.epochs=3", "--run-dir", run_dir,
                 "--resume", run_dir / "checkpoints" / "step_00000010")
    moved = sorted(str(p.relative_to(run_dir)) for p in run_dir.glob("superseded-*/step_*"))
    assert moved == ["superseded-20260101-000000-2/step_00000015", "superseded-20260101-000000/step_00000015"]

"""metrics.jsonl survives a cut-off last line: readers skip and report it, writers never leave one."""

from __future__ import annotations

import errno
import json
import os

import pytest

from conftest import assert_resumed
from reliability_helpers import HEART, TINY, call, train_ok


def test_a_cut_off_last_metrics_line_is_skipped_and_reported(capsys, tmp_path):
    run_dir = tmp_path / "run"
    train_ok(capsys, HEART, *TINY, "trainer.epochs=2", "trainer.log_every_steps=1", "--run-dir", run_dir)
    metrics = run_dir / "metrics.jsonl"
    with metrics.open("a") as file:
        file.write('{"step": 11, "epoch": 3, "train/lo')  # a crash or a full disk mid-write
    code, out, err = call(capsys, "plot", run_dir)
    assert code == 0 and "skipping damaged line" in err and "Traceback" not in err
    out, err = train_ok(capsys, HEART, *TINY, "trainer.epochs=3", "trainer.log_every_steps=1", "--run-dir", run_dir)
    assert_resumed(out + err, 10)
    lines = metrics.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # the writer repaired the file
    assert [json.loads(line)["step"] for line in lines if "train/loss" in line] == list(range(1, 16))


def test_a_failed_metrics_write_leaves_no_half_line(tmp_path, monkeypatch):
    from trainwright.errors import UserError
    from trainwright.run.tracking import JsonLinesFile

    path = tmp_path / "metrics.jsonl"
    log = JsonLinesFile(path, 0)
    log.log({"train/loss": 0.5}, 1, 1)
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        real_write(fd, data[:7])  # part of the line gets out, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(UserError, match="No space left on device"):
        log.log({"train/loss": 0.25}, 2, 1)
    monkeypatch.undo()
    log.close()
    assert path.read_text() == '{"step": 1, "epoch": 1, "train/loss": 0.5}\n'


def test_epochs_are_counted_from_1_everywhere_a_user_reads_them(capsys, tmp_path):
    """metrics.jsonl (training, validation and checkpoint lines), the samples log, summary.json and the resume
    message all give a step's epoch counted from 1 (5 steps per epoch: steps 1-5 are epoch 1, 6-10 epoch 2)."""
    run_dir = tmp_path / "run"
    args = [HEART, *TINY, "trainer.epochs=2", "trainer.log_every_steps=1", "checkpoint.every_steps=3",
            "checkpoint.keep_last=5", "trainer.record_samples=true", "--run-dir", run_dir]
    train_ok(capsys, *args)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (run_dir / "samples" / "rank0.jsonl").read_text().splitlines()]
    assert any("checkpoint/stall_seconds" in r for r in records) and len(samples) == 10
    for record in records + samples:
        assert record["epoch"] == (record["step"] + 4) // 5, record
    assert json.loads((run_dir / "summary.json").read_text())["epoch"] == 2
    out, _ = train_ok(capsys, *args, "--resume", run_dir / "checkpoints" / "step_00000006")
    assert "Resuming from step 6 (epoch 2, batch 1) in " in out  # the second epoch, after its first batch

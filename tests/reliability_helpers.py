"""Helpers of the reliability tests (issue 8): in-process CLI calls, tiny recipes, folder snapshots,
read-only folders."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import RECIPES, assert_user_error
from trainwright.cli import main

HEART = RECIPES / "heart.yaml"
HOUSE = RECIPES / "house_prices.yaml"
# 320 training points in batches of 64: 5 steps per epoch.
TINY = ["data.num_points=400", "trainer.epochs=1", "logging.wandb=false"]
HOUSE_SMALL = ["logging.wandb=false", "trainer.epochs=4", "trainer.eval_every_epochs=2", "checkpoint.every_epochs=2"]


def call(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    """`trainwright ARGV` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def user_error(capsys: pytest.CaptureFixture, *argv: object, fragments: tuple[str, ...] = ()) -> str:
    """Run the CLI and assert one clean user error (exit 2, one message, no traceback); return the message."""
    code, out, err = call(capsys, *argv)
    message = assert_user_error(code, err, *fragments)
    assert "Run complete" not in out
    return message


def train_ok(capsys: pytest.CaptureFixture, *argv: object) -> tuple[str, str]:
    code, out, err = call(capsys, "train", *argv)
    assert code == 0, err
    return out, err


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder` (and '<dir>' for folders)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
        for p in sorted(folder.rglob("*"))
    }


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make `folder` read-only for this process: a read-only bind mount as root (root ignores file
    modes), mode 0555 otherwise. Skips the test where neither is possible."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount as root here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True, capture_output=True)

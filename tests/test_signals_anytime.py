"""A signal at any moment of a command is one message and a documented exit code, with the run dir's lock
released (issue 26, items 6 and 7): Ctrl-C (130) and SIGTERM/SIGHUP (75) while the command still imports,
and while `train` holds its lock before training; DataLoader workers say nothing of their own; a callback
calling sys.exit is a callback failure (exit 2, checkpoints kept).

Each signal comes at a chosen phase, not after a delay: the command runs as `python -m trainwright` does
(runpy), with an import hook that says when the module of that phase is being imported and waits there."""

from __future__ import annotations

import signal
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import assert_user_error, checkpoint_steps, cli_env, cli_env_with_path, run_cli
from reliability_helpers import HEART, TINY

# `python -c BOOT PHASE ARGS...`: `python -m trainwright ARGS...`, that waits at the import of module PHASE.
# With SWALLOW set, the wait is a library's that swallows the signal's exception, then goes on (SWALLOW=on) or
# fails with another error (SWALLOW=break, as a half-imported numpy does).
BOOT = textwrap.dedent('''
    import importlib.abc, os, runpy, sys, time

    PHASE = sys.argv.pop(1)

    class WaitAt(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == PHASE:
                sys.meta_path.remove(self)
                print(f"importing {name}", file=sys.stderr, flush=True)
                try:
                    time.sleep(300)
                except BaseException:
                    if not os.environ.get("SWALLOW"):
                        raise
                    if os.environ["SWALLOW"] == "break":
                        raise ImportError("cannot load module more than once per process")
            return None

    sys.meta_path.insert(0, WaitAt())
    runpy.run_module("trainwright", run_name="__main__", alter_sys=True)
''')


def _at_phase(start, phase: str, *args: object, swallow: str | None = None):
    process = start([sys.executable, "-c", BOOT, phase, *args], cli_env(SWALLOW=swallow), name=phase)
    process.wait_for_text(f"importing {phase}")
    return process


def _assert_said_once(process, code: int, line: str) -> None:
    assert process.finish() == code, process.describe()
    output = process.output()
    assert output.count("trainwright: ") == 1 and line in output, process.describe()
    assert "Traceback" not in output, process.describe()


@pytest.mark.parametrize(("phase", "command", "sig", "code", "line"), [
    ("trainwright.cli", "train", signal.SIGINT, 130, "trainwright: interrupted"),
    ("trainwright.cli", "eval", signal.SIGTERM, 75, "trainwright: got SIGTERM; stopped eval (run the same command"),
    ("trainwright.commands", "check", signal.SIGINT, 130, "trainwright: interrupted"),
    ("trainwright.commands", "predict", signal.SIGHUP, 75, "trainwright: got SIGHUP; stopped predict"),
])
def test_a_signal_while_the_command_imports_is_one_message(start, tmp_path, phase, command, sig, code, line):
    process = _at_phase(start, phase, command, tmp_path / "run")
    process.signal(sig)
    _assert_said_once(process, code, line)


@pytest.mark.parametrize("swallow", ["on", "break"])
@pytest.mark.parametrize(("sig", "code", "line"), [
    (signal.SIGINT, 130, "trainwright: interrupted"),
    (signal.SIGTERM, 75, "trainwright: got SIGTERM; stopped check (run the same command again)"),
])
def test_a_signal_a_library_swallows_still_ends_the_command(start, sig, code, line, swallow):
    """Seen in `eval`: Ctrl-C during torch's imports exited 0, or with another error's traceback."""
    process = _at_phase(start, "trainwright.recipe", "check", HEART, swallow=swallow)
    process.signal(sig)
    _assert_said_once(process, code, line)


@pytest.mark.parametrize(("sig", "code", "line"), [
    (signal.SIGTERM, 75, "trainwright: got SIGTERM before training started; stopping (nothing to save yet)"),
    (signal.SIGHUP, 75, "trainwright: got SIGHUP before training started; stopping (nothing to save yet)"),
    (signal.SIGINT, 130, "trainwright: interrupted"),
])
def test_a_signal_before_training_releases_the_lock(start, tmp_path, sig, code, line):
    run_dir = tmp_path / "run"
    process = _at_phase(start, "trainwright.training.start", "train", HEART, *TINY, "--run-dir", run_dir)
    assert (tmp_path / ".run.trainwright-lock").is_file()  # train holds its lock while it imports torch
    process.signal(sig)
    _assert_said_once(process, code, line)
    assert not (tmp_path / ".run.trainwright-lock").exists()
    result = run_cli("train", HEART, *TINY, "--run-dir", run_dir)  # and the same command trains, with no note
    assert result.returncode == 0 and "taking over" not in result.stderr, result.stderr


# --- DataLoader workers and callbacks ------------------------------------------------------------------------

MODULE = '''
import os, signal

import torch
from torch.utils.data import Dataset

from trainwright import Callback
from trainwright.data.bundle import DataBundle, Task


class Items(Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.points, self.labels = torch.randn(n, 2, generator=g), torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.points)

    def __getitem__(self, index):
        return self.points[index], self.labels[index]


def items(num_points: int = 256) -> DataBundle:
    return DataBundle(train=Items(num_points), val=Items(16), task=Task("multiclass", class_names=("a", "b")))


class HangUp(Callback):
    """The terminal closes at step 3: SIGHUP to the whole process group, DataLoader workers included."""

    def on_step_end(self, run):
        if run.step == 3:
            os.killpg(os.getpgid(0), signal.SIGHUP)


class Exits(Callback):
    def on_step_end(self, run):
        if run.step == 5:
            raise SystemExit(0)
'''

RECIPE = (
    "name: items\ndata: {name: 'tw_signal_items:items', batch_size: 8, num_workers: 2}\n"
    "model: {name: mlp, in_features: 2, hidden: [4], out_features: 2}\nloss: {name: cross_entropy}\n"
    "optimizer: {name: sgd, lr: 0.1}\ntrainer: {epochs: 2}\ncheckpoint: {every_steps: 2}\nlogging: {wandb: false}\n"
)


@pytest.fixture
def user_code(tmp_path) -> tuple[Path, dict[str, str]]:
    (tmp_path / "tw_signal_items.py").write_text(MODULE)
    (tmp_path / "items.yaml").write_text(RECIPE)
    env = cli_env_with_path(tmp_path)
    return tmp_path / "items.yaml", env


def test_dataloader_workers_say_nothing_on_a_sighup_to_the_group(start, tmp_path, user_code):
    recipe, env = user_code
    process = start([sys.executable, "-m", "trainwright", "train", recipe, "callbacks=[tw_signal_items:HangUp]",
                     "--run-dir", tmp_path / "run"], env, name="train")  # (a session of its own: its group only)
    assert process.finish() == 75, process.describe()
    output = process.output()
    assert output.count("got SIGHUP") == 1 and "Stopped at step 3" in output, process.describe()
    assert "Traceback" not in output and "DataLoader worker" not in output, process.describe()
    assert not (tmp_path / ".run.trainwright-lock").exists()


def test_a_callback_calling_sys_exit_is_a_callback_failure_with_the_checkpoints_kept(tmp_path, user_code):
    recipe, env = user_code
    run_dir = tmp_path / "run"
    result = run_cli("train", recipe, "callbacks=[tw_signal_items:Exits]", "--run-dir", run_dir, env=env)
    assert_user_error(result.returncode, result.stderr,
                      "callback Exits (tw_signal_items:Exits) failed in on_step_end at step 5: it called sys.exit(0) (",
                      "run.request_stop(reason)", "step_00000004, is kept")
    assert checkpoint_steps(run_dir) == [2, 4] and not (run_dir / "summary.json").exists()
    assert not (tmp_path / ".run.trainwright-lock").exists()

"""The resume harness: run `trainwright` killed at a chosen step (tests/kill_at_step.py: its whole process tree
SIGKILLed once that step's checkpoint is complete on disk, never at a moment), restart it, check that it said
`Resuming from step N` (N > 0, no checkpoint called damaged) and compare it bitwise with a reference run.

Reference runs (uninterrupted) are shared: `reference_runs` (a session fixture in conftest.py) trains each
distinct command once per test session, across the pytest-xdist workers too, and hands every test the same
folder, which tests only read (copy it to change it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from filelock import FileLock

import processes
from conftest import HEART_SMALL, REPO, assert_ok, assert_resumed, checkpoint_dir, checkpoint_problem, cli_env, describe

KILLER = Path(__file__).with_name("kill_at_step.py")
ACCELERATE_CONFIGS = REPO / "accelerate_configs"
WEIGHTS = "model.safetensors"
HEART = REPO / "recipes" / "heart.yaml"
# The heart run most resume tests share (its reference trains once): 2 epochs of 10 steps, a checkpoint every 4
# steps and at each epoch's end (4, 8, 10, 12, 16, 20; the last 2 kept); kill it at step 8 or 12.
HEART_RUN: tuple[object, ...] = ("train", HEART, HEART_SMALL, "trainer.epochs=2", "checkpoint.every_steps=4",
                                 "logging.wandb=false")
HEART_STEPS = 20


def launcher(config: str | Path, *options: object) -> list[object]:
    """`-m accelerate.commands.launch --config_file CONFIG` on a free port (CONFIG: a name in
    accelerate_configs/ or a path), then `options` (e.g. --num_processes 3)."""
    path = config if isinstance(config, Path) else ACCELERATE_CONFIGS / config
    return ["-m", "accelerate.commands.launch", "--config_file", path, "--main_process_port", processes.free_port(),
            *options]


def command(args: Sequence[object], launch: Sequence[object] = (), kill_at: int | None = None) -> list[object]:
    """`python [LAUNCH] -m trainwright ARGS`, or with `kill_at` the same through tests/kill_at_step.py."""
    entry = [KILLER, kill_at] if kill_at is not None else ["-m", "trainwright"]
    return [sys.executable, *launch, *entry, *args]


def run(args: Sequence[object], launch: Sequence[object] = (), env: Mapping[str, str] | None = None,
        cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess:
    """`trainwright ARGS` (through `launch` when given) to its end; everything it left running is killed."""
    return processes.run(command(args, launch), dict(env) if env is not None else cli_env(), cwd, timeout)


def train(recipe: str | Path, run_dir: Path, *overrides: str, config: str | Path | None = None,
          env: Mapping[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`trainwright train RECIPE OVERRIDES --run-dir RUN_DIR` to its end: one process, or under the accelerate
    config `config`."""
    return run(["train", recipe, *overrides, "--run-dir", run_dir], launcher(config) if config else (), env,
               timeout=timeout)


def kill_at(step: int, args: Sequence[object], run_dir: Path | None = None, launch: Sequence[object] = (),
            env: Mapping[str, str] | None = None, cwd: Path = REPO,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """`trainwright ARGS`, SIGKILLed with its whole process tree right after its checkpoint of `step` is on disk.
    Asserts that it was killed, not finished: and, given `run_dir`, that it left that checkpoint complete (its
    manifest matches) and no final weights."""
    env = dict(env) if env is not None else cli_env()
    result = processes.run(command(args, launch, kill_at=step), env, cwd, timeout)
    assert result.returncode == -signal.SIGKILL, describe(result)
    if run_dir is not None:
        assert checkpoint_problem(checkpoint_dir(run_dir, step)) is None, describe(result)
        assert not (run_dir / WEIGHTS).exists(), describe(result)
    return result


def resume(step: int, args: Sequence[object], launch: Sequence[object] = (), env: Mapping[str, str] | None = None,
           cwd: Path = REPO, timeout: float = 300, times: int = 1) -> subprocess.CompletedProcess:
    """`trainwright ARGS` run again to its end: it must succeed and say `times` times that it resumed from
    `step` (and call no checkpoint damaged)."""
    result = assert_ok(run(args, launch, env, cwd, timeout))
    assert_resumed(result.stdout + result.stderr, step, times)
    return result


def kill_and_resume(step: int, args: Sequence[object], run_dir: Path | None = None, launch: Sequence[object] = (),
                    env: Mapping[str, str] | None = None, cwd: Path = REPO,
                    timeout: float = 300) -> subprocess.CompletedProcess:
    """`kill_at(step, ...)`, then `resume(step, ...)` of the same command; the restart's result."""
    kill_at(step, args, run_dir, launch, env, cwd, timeout)
    return resume(step, args, launch, env, cwd, timeout)


def assert_same_weights(run_dir: Path, reference: Path, name: str = WEIGHTS) -> None:
    """`run_dir/name` holds the very bytes of `reference/name`."""
    assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), \
        f"{run_dir / name} is not bitwise equal to {reference / name}"


class ReferenceRuns:
    """Uninterrupted runs trained once per test session and shared: `reference_runs(args)` is the run dir of
    `trainwright ARGS --run-dir <a folder of its own>` (under the accelerate config `config` when given),
    trained by whichever test (on whichever xdist worker) asks first; the others wait for it and reuse it.
    A run is named by its command and `env` changes, so tests that share a recipe share its run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def __call__(self, args: Sequence[object], config: str | None = None, options: Sequence[object] = (),
                 env: Mapping[str, str] | None = None, cwd: Path = REPO, world_size: int | None = None) -> Path:
        changes = dict(env or {})
        key = hashlib.sha256(json.dumps([config, [str(a) for a in (*options, *args)], sorted(changes.items()),
                                         str(cwd)]).encode()).hexdigest()[:16]
        folder = self.root / key
        with FileLock(str(self.root / f"{key}.lock")):
            done = folder / "output.txt"
            if not done.exists():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                launch = launcher(config, *options) if config else []
                result = assert_ok(run([*args, "--run-dir", folder / "run"], launch, cli_env(**changes), cwd))
                if world_size is not None:
                    assert f"world_size={world_size} " in result.stdout, describe(result)
                done.write_text(result.stdout + result.stderr)
        return folder / "run"

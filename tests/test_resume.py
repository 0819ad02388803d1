"""Checkpoints that never lose work: real training subprocesses killed, stopped by signals and restarted.

Every restart must say `Resuming from step N`, N being the newest checkpoint that matches its manifest
(checked here from manifest.json, independently of trainwright). The finished run is then compared
with an uninterrupted run of the same recipe on the same number of processes: final weights bitwise
identical and the same logged curve; also with an LR schedule, gradient accumulation and bf16. A run
resumed on another number of processes cannot be bitwise identical (the gradient sums are rounded
differently), so it is compared step by step on the samples every step trained on, and on the
validation loss within float tolerance.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import termios
from collections.abc import Callable
from pathlib import Path

import pytest

import processes
import resuming
from conftest import (
    REPO,
    WALL_CLOCK,
    assert_resumed,
    assert_user_error,
    checkpoint_dir,
    checkpoint_problem,
    checkpoint_steps,
    cli_env,
    cli_env_with_path,
    describe,
    metrics_by_step,
    newest_valid_checkpoint,
    no_credentials_env,
    read_jsonl,
    wandb_history,
    wandb_records,
    wandb_run_ids,
    weights,
)

CPU_2PROC = REPO / "accelerate_configs" / "cpu_2proc.yaml"
# 6400 training points / 64 = 100 steps per epoch, 3 epochs; a checkpoint every 25 steps.
SMALL = ["data.num_points=8000", "trainer.epochs=3", "checkpoint.every_steps=25", "checkpoint.keep_last=3",
         "logging.wandb=false", "trainer.log_every_steps=10"]
TOTAL_STEPS = 300
STEPS_PER_EPOCH = 100
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130
# What slurm/train_multi.sbatch exports so that the torch launcher relays SIGUSR1 to the workers.
PET_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
RESUMING = re.compile(r"^Resuming from step (\d+) \(epoch (\d+), batch (\d+)\) in (\S+)$", re.M)
STOPPED = re.compile(r"^Stopped at step (\d+): checkpoint saved in (\S+)\. Run the same command to resume", re.M)


def command(run_dir: Path, overrides: list[str] | tuple[str, ...] = (), processes_: int = 1,
            extra: tuple[str, ...] = (), base: list[str] = SMALL) -> list[object]:
    """`python -m trainwright train` (one process) or the same through `accelerate launch` (two CPU processes,
    on a port the OS says is free)."""
    args = ["-m", "trainwright", "train", "recipes/heart.yaml", *base, *overrides, "--run-dir", run_dir, *extra]
    if processes_ == 1:
        return [sys.executable, *args]
    assert processes_ == 2, "accelerate_configs/cpu_2proc.yaml starts 2 processes"
    launcher = ["-m", "accelerate.commands.launch", "--config_file", CPU_2PROC,
                "--main_process_port", processes.free_port()]
    return [sys.executable, *launcher, *args]


def train(run_dir: Path, *overrides: str, processes_: int = 1, extra: tuple[str, ...] = (),
          env: dict[str, str] | None = None, base: list[str] = SMALL):
    """Run training to its end (or error) in the foreground."""
    return processes.run(command(run_dir, overrides, processes_, extra, base), env or cli_env(), timeout=300)


def completed(result):
    assert result.returncode == 0, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    return result


def resumed_from(output: str) -> tuple[int, int, int] | None:
    """(step, epoch, batch) of the `Resuming from step ...` line, or None when the run started fresh."""
    found = RESUMING.findall(output)
    assert len(found) <= 1, output
    return tuple(int(v) for v in found[0][:3]) if found else None


def assert_resumed_from(output: str, step: int) -> tuple[int, int, int]:
    """`output`: a restart's stdout and stderr; it names no checkpoint as damaged (conftest.assert_resumed)."""
    assert_resumed(output, step)
    position = resumed_from(output)
    assert position is not None, f"no 'Resuming from step {step}' line: the run started over\n{output}"
    assert position[0] == step, (
        f"resumed from step {position[0]}, expected the newest valid checkpoint {step}\n{output}"
    )
    return position


def stopped_at(output: str) -> int:
    found = STOPPED.findall(output)
    assert len(found) == 1, output
    return int(found[0][0])


def trainer_json(run_dir: Path, step: int) -> dict:
    return json.loads((checkpoint_dir(run_dir, step) / "trainer.json").read_text())


def training_curve(run_dir: Path) -> list[tuple]:
    """(step, key, value) of every logged metric but the wall-clock ones, in the order logged."""
    return [
        (r["step"], k, v)
        for r in read_jsonl(run_dir / "metrics.jsonl")
        for k, v in r.items()
        if k not in ("step", "epoch", *WALL_CLOCK)
    ]


def last_sample_step(run_dir: Path, rank: int) -> int:
    """The last step process `rank` recorded in samples/rank<R>.jsonl (0 before its first step)."""
    records = read_jsonl(run_dir / "samples" / f"rank{rank}.jsonl")
    return records[-1]["step"] if records else 0


def step_samples(run_dir: Path) -> dict[int, list[int]]:
    """step -> the sorted sample indices all processes together trained on at that step."""
    samples: dict[int, list[int]] = {}
    for path in (run_dir / "samples").glob("rank*.jsonl"):
        for record in read_jsonl(path):
            samples.setdefault(record["step"], []).extend(record["indices"])
    return {step: sorted(indices) for step, indices in samples.items()}


def assert_no_stale_files(run_dir: Path) -> None:
    left = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp") or p.name.endswith(".tmp")]
    assert not left, f"unfinished saves left behind: {left}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted single-process run (with the sample log)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = completed(train(run_dir, "trainer.record_samples=true"))
    assert "world_size=1 device=cpu" in result.stdout
    return run_dir


@pytest.fixture(scope="module")
def reference_2proc(tmp_path_factory) -> Path:
    """An uninterrupted run with 2 CPU processes (DDP over gloo)."""
    run_dir = tmp_path_factory.mktemp("reference2") / "run"
    result = completed(train(run_dir, "trainer.record_samples=true", processes_=2))
    assert "world_size=2 device=cpu" in result.stdout
    return run_dir


# --- SIGKILL: the newest valid checkpoint, bitwise -------------------------------------------------


def test_sigkill_and_stop_resume_bitwise_and_continue_one_wandb_run(reference, start, tmp_path):
    """SIGKILL right after the step-50 checkpoint, resume, SIGTERM after one more checkpoint, resume to the end.
    W&B (offline) writes one file per start; all three must be the same W&B run and their history must
    continue the curve: the killed run's file holds a prefix (W&B buffers its file, so a SIGKILL loses
    its tail), the stopped run's file exactly the steps it trained, the last one exactly the rest."""
    run_dir = tmp_path / "run"
    env = no_credentials_env(tmp_path / "home")
    offline = "logging.wandb={mode: offline}"

    killed_at = 50
    resuming.kill_at(killed_at, ["train", "recipes/heart.yaml", *SMALL, offline, "--run-dir", run_dir], run_dir,
                     env=env)

    stopped = start(command(run_dir, [offline]), env, name="stopped")
    stopped.wait_for("a checkpoint after the resume", lambda: checkpoint_steps(run_dir)[-1] > killed_at)
    stopped.signal(signal.SIGTERM)
    assert stopped.finish() == EXIT_PREEMPTED, stopped.describe()
    assert_resumed_from(stopped.output(), killed_at)
    stop_step = stopped_at(stopped.output())
    assert killed_at < stop_step < TOTAL_STEPS

    result = completed(train(run_dir, offline, env=env))
    assert_resumed_from(result.stdout + result.stderr, stop_step)
    assert weights(run_dir) == weights(reference)
    assert training_curve(run_dir) == training_curve(reference)  # no step logged twice, nothing rewound

    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    assert run_id and trainer_json(run_dir, TOTAL_STEPS)["wandb_run_id"] == run_id
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))  # folder names start with the start time
    assert [f.name for f in files] == [f"run-{run_id}.wandb"] * 3, files
    records = [wandb_records(f, env) for f in files]
    ids = [wandb_run_ids(r) for r in records]
    assert ids[0] <= {run_id} and ids[1:] == [{run_id}, {run_id}], ids  # one W&B run, continued twice

    expected = metrics_by_step(run_dir, skip=WALL_CLOCK)
    steps = sorted(expected)
    first, second, third = (wandb_history(r) for r in records)
    assert sorted(first) == steps[: len(first)], "the killed run's W&B history is not a prefix of the curve"
    assert sorted(second) == [s for s in steps if killed_at < s <= stop_step]
    assert sorted(third) == [s for s in steps if s > stop_step]
    for history in (first, second, third):
        for step, logged in history.items():
            values = {k: v for k, v in logged.items() if k not in (*WALL_CLOCK, "epoch")}  # as metrics_by_step
            assert values == pytest.approx(expected[step]), step


def test_sigkill_with_two_processes_resumes_bitwise(reference_2proc, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "recipes/heart.yaml", *SMALL, "trainer.record_samples=true", "--run-dir", run_dir]
    killed = resuming.kill_at(50, args, run_dir, resuming.launcher(CPU_2PROC))
    assert "world_size=2 device=cpu" in killed.stdout
    result = resuming.resume(50, args, resuming.launcher(CPU_2PROC))
    assert "world_size=2 device=cpu" in result.stdout
    assert_resumed_from(result.stdout + result.stderr, 50)
    assert weights(run_dir) == weights(reference_2proc)


# Put first on PYTHONPATH of a killed run: hashing a checkpoint's files into its manifest takes 20 ms a file,
# so a kill right after a checkpoint folder appears would land inside the manifest step if it came later.
_SLOW_MANIFEST = """
import time
import trainwright.run.files

_sha256 = trainwright.run.files.sha256


def _slow_sha256(path):
    time.sleep(0.02)
    return _sha256(path)


trainwright.run.files.sha256 = _slow_sha256
"""


def slow_manifest_env(folder: Path) -> dict[str, str]:
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(_SLOW_MANIFEST)
    return cli_env_with_path(folder)


def test_kills_at_any_moment_including_during_saves(reference, start, tmp_path):
    """A checkpoint every 2 steps makes saving most of the work. Kills alternate between "while a save is in
    progress" (its checkpoints/.tmp-step_* folder exists before and after the kill) and "just after a
    checkpoint" (as soon as its step_* folder appears; the killed runs hash slowly, so a folder named before
    its manifest was written would be caught without one). At least one kill must land inside a save. After
    every kill the newest step_* folder is complete; every restart resumes from the newest complete
    checkpoint, never from the unfinished one."""
    run_dir = tmp_path / "run"
    overrides = ["checkpoint.every_steps=2"]
    env = slow_manifest_env(tmp_path / "slow_manifest")
    kills_during_saves, newest = 0, None
    for round_ in range(6):
        if round_ >= 3 and kills_during_saves:
            break
        process = start(command(run_dir, overrides), env, name=f"round{round_}")
        if newest is None:
            process.wait_for_text("world_size=1 device=cpu")
        else:  # the line comes after start-up deleted the unfinished saves of the previous round
            process.wait_for_text(f"Resuming from step {newest} (")
            assert_resumed_from(process.output(), newest)
        after = newest or 0
        # the waits below call their functions within this iteration, so they read its `after` and `newer` (B023)
        if round_ % 2 == 0:
            # a complete checkpoint newer than the last one first, then a kill inside the save after it
            newer = process.wait_for("a new checkpoint", lambda: [s for s in checkpoint_steps(run_dir) if s > after])  # noqa: B023

            def save_in_progress() -> Path | None:
                tmp = [p for p in (run_dir / "checkpoints").glob(".tmp-step_*") if int(p.name[10:]) > newer[0]]  # noqa: B023
                return tmp[0] if tmp else None

            tmp = process.wait_for("a save in progress", save_in_progress, interval=0.001)
            process.signal(signal.SIGKILL)
            process.finish()
            if tmp.is_dir() and not (run_dir / "checkpoints" / tmp.name[5:]).exists():
                kills_during_saves += 1
        else:
            process.wait_for("a new checkpoint", lambda: (checkpoint_steps(run_dir) or [0])[-1] > after, interval=0.001)  # noqa: B023
            process.signal(signal.SIGKILL)
            process.finish()
        process.kill()
        named = checkpoint_steps(run_dir)[-1]
        problem = checkpoint_problem(checkpoint_dir(run_dir, named))
        assert problem is None, (
            f"round {round_}: checkpoint folder step {named} was named before it was complete: {problem}"
        )
        newest = newest_valid_checkpoint(run_dir)
        assert newest is not None and newest > after
    assert kills_during_saves >= 1, "no kill landed while a save was in progress"

    result = completed(train(run_dir, *overrides))
    assert_resumed_from(result.stdout + result.stderr, newest)
    assert weights(run_dir) == weights(reference)
    assert training_curve(run_dir) == training_curve(reference)
    assert_no_stale_files(run_dir)


def test_damaged_newest_checkpoint_is_reported_and_skipped(reference, tmp_path):
    run_dir = tmp_path / "run"
    resuming.kill_at(75, ["train", "recipes/heart.yaml", *SMALL, "--run-dir", run_dir], run_dir)
    *_, previous, last = checkpoint_steps(run_dir)
    assert (previous, last) == (50, 75)
    newest = checkpoint_dir(run_dir, last)
    model_file = newest / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:-100])  # truncated
    assert checkpoint_problem(checkpoint_dir(run_dir, previous)) is None

    result = completed(train(run_dir))
    assert f"checkpoint {newest} is damaged" in result.stderr
    position = resumed_from(result.stdout)
    assert position is not None and position[0] == previous, describe(result)
    assert weights(run_dir) == weights(reference)


@pytest.mark.parametrize("damage", ["flipped_byte", "no_manifest"])
def test_resume_option_refuses_a_damaged_checkpoint(reference, tmp_path, damage):
    folder = tmp_path / "step_00000275"
    shutil.copytree(checkpoint_dir(reference, 275), folder)
    if damage == "flipped_byte":
        model_file = folder / "model.safetensors"
        data = bytearray(model_file.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, other bytes
        model_file.write_bytes(bytes(data))
        fragments = ("--resume", str(folder), "model.safetensors")
    else:
        (folder / "manifest.json").unlink()
        fragments = ("--resume", str(folder), "manifest.json")
    result = train(tmp_path / "run", extra=("--resume", str(folder)))
    assert_user_error(result.returncode, result.stderr, *fragments)
    assert "Resuming" not in result.stdout
    assert not (tmp_path / "run").exists()


# --- stop signals: one step, every process, exit 75 ------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_stop_signal_saves_a_checkpoint_and_exits_75(reference, start, tmp_path, sig):
    run_dir = tmp_path / "run"
    process = start(command(run_dir), cli_env(), name="stopped")
    process.wait_for("a checkpoint", lambda: checkpoint_steps(run_dir))
    name = signal.Signals(sig).name
    process.signal(sig)
    process.wait_for_text(f"trainwright: got {name}; saving a checkpoint after this step")
    process.signal(sig)  # more signals, while stopping and after the save, change nothing
    process.wait_for_text("Stopped at step")
    process.signal(sig)
    assert process.finish() == EXIT_PREEMPTED, process.describe()
    output = process.output()
    assert output.count(f"trainwright: got {name}") == 1, output
    step = stopped_at(output)
    assert checkpoint_steps(run_dir)[-1] == step
    assert checkpoint_problem(checkpoint_dir(run_dir, step)) is None
    assert trainer_json(run_dir, step)["step"] == step
    assert max(r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")) <= step
    assert not (run_dir / "summary.json").exists() and not (run_dir / "model.safetensors").exists()

    result = completed(train(run_dir))
    assert_resumed_from(result.stdout + result.stderr, step)
    assert weights(run_dir) == weights(reference)


def test_ctrl_c_exits_130_without_a_checkpoint(start, tmp_path):
    run_dir = tmp_path / "run"
    # checkpoints only at the end of each 100-step epoch; the interrupt comes at about step 10
    process = start(command(run_dir, ["checkpoint.every_steps=null"]), cli_env(), name="interrupted")
    process.wait_for("the first logged step", lambda: read_jsonl(run_dir / "metrics.jsonl"))
    process.signal(signal.SIGINT)
    assert process.finish() == EXIT_INTERRUPTED, process.describe()
    output = process.output()
    assert "trainwright: interrupted" in output
    assert "Traceback" not in output and "Stopped at step" not in output
    assert not (run_dir / "checkpoints").exists() or not list((run_dir / "checkpoints").iterdir()), \
        sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert not (run_dir / "summary.json").exists()


def _rank_pid(process: processes.Background, rank: int) -> int:
    for child in process.children():
        if child.environ().get("RANK") == str(rank) and "trainwright" in child.cmdline():
            return child.pid
    pytest.fail(f"no worker with RANK={rank} under the launcher\n{process.describe()}")


# (who gets the signal, signal, extra environment for the launcher)
TWO_PROCESS_STOPS = [
    ("launcher", signal.SIGTERM, {}),  # the torch launcher relays SIGTERM by default
    ("launcher", signal.SIGUSR1, {"PET_SIGNALS_TO_HANDLE": PET_SIGNALS}),  # as slurm/train_multi.sbatch sets it
    ("rank 1", signal.SIGUSR1, {}),  # one worker alone: the other must stop at the same step
]


def test_two_processes_stop_at_one_step_whoever_gets_the_signal(reference_2proc, start, tmp_path):
    """Three stops in a row, each resumed: SIGTERM to the launcher, SIGUSR1 to the launcher with the relay
    the Slurm script sets up, SIGUSR1 to the rank-1 worker only. Every time both processes end at the
    same step (the last step in each rank's sample log), that step is the saved checkpoint's, and the
    next start resumes from it; the end result is bitwise the uninterrupted 2-process run's."""
    run_dir = tmp_path / "run"
    overrides = ["trainer.record_samples=true"]
    resumed = 0
    for who, sig, extra_env in TWO_PROCESS_STOPS:
        name = signal.Signals(sig).name
        process = start(command(run_dir, overrides, processes_=2), cli_env(**extra_env), name=f"{name}-{who}")
        process.wait_for_text("world_size=2 device=cpu")
        if resumed:
            process.wait_for_text(f"Resuming from step {resumed} (")
        process.wait_for("both processes training",  # it calls the lambda in this iteration (B023)
                         lambda: min(last_sample_step(run_dir, r) for r in (0, 1)) > resumed,  # noqa: B023
                         interval=0.02)
        if who == "launcher":
            process.signal(sig)
        else:
            os.kill(_rank_pid(process, 1), sig)
        returncode = process.finish(timeout=180)
        output = process.output()
        step = stopped_at(output)
        assert [last_sample_step(run_dir, r) for r in (0, 1)] == [step, step], output
        assert output.count(f"got {name}; saving") == 1, output  # said by the main process only
        if who != "launcher":  # for rank 1
            assert f"trainwright: another process got {name}; saving a checkpoint after this step" in output, output
        assert resumed < step < TOTAL_STEPS
        assert checkpoint_steps(run_dir)[-1] == step
        folder = checkpoint_dir(run_dir, step)
        assert checkpoint_problem(folder) is None
        assert trainer_json(run_dir, step)["step"] == step
        assert {p.name for p in folder.glob("rng_*.safetensors")} == {"rng_0.safetensors", "rng_1.safetensors"}
        # The launcher exits 1 (README): with a SignalException when it relayed the signal, with a failure
        # report of the workers' exit codes when they stopped on their own. There the first worker to exit
        # (75) makes the launcher SIGTERM the other (-15) if that one is still shutting down.
        assert returncode == 1, output
        if who == "launcher":
            assert "SignalException" in output, output
        else:
            exit_codes = dict(
                re.findall(r"^\s*rank\s*:\s*(\d+) \(local_rank.*\n\s*exitcode\s*:\s*(-?\d+)", output, re.M)
            )
            assert sorted(exit_codes) == ["0", "1"] and str(EXIT_PREEMPTED) in exit_codes.values(), output
            assert set(exit_codes.values()) <= {str(EXIT_PREEMPTED), "-15"}, output
        assert not (run_dir / "summary.json").exists()
        resumed = step

    result = completed(train(run_dir, *overrides, processes_=2))
    assert "world_size=2 device=cpu" in result.stdout
    assert_resumed_from(result.stdout + result.stderr, resumed)
    assert weights(run_dir) == weights(reference_2proc)


def lock_file(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.trainwright-lock"


def _kill_the_launcher_alone(start: processes.Starter, run_dir: Path, overrides: list[str], what: str,
                             ready: Callable[[], object]) -> tuple[processes.Background, str]:
    """Start a 2-process run and SIGKILL its launcher alone once `ready()` (`what` names it); its orphaned workers
    must exit 75 and leave nothing of the launch running. The launcher and its output."""
    with processes.adopting_orphans():  # the orphaned workers' exit codes come here
        launcher = start(command(run_dir, overrides, processes_=2), cli_env(), name="killed")
        launcher.wait_for(what, ready, interval=0.01)
        workers = [_rank_pid(launcher, r) for r in (0, 1)]
        launcher.signal(signal.SIGKILL)
        codes = processes.reap(workers, timeout=60)
    output = launcher.output()
    assert list(codes.values()) == [EXIT_PREEMPTED] * 2, output
    assert not processes.tagged_processes(launcher.tag), "a process of the killed launch is left running"
    return launcher, output


def test_workers_save_and_exit_75_when_the_launcher_is_killed(reference_2proc, start, tmp_path):
    """SIGKILL to the launcher alone (a job runner's timeout, the OOM killer) leaves its workers running in
    sessions of their own: they notice it is gone, stop at one step with a checkpoint, exit 75 within
    seconds and free the run dir's lock; the same command then resumes bitwise."""
    run_dir = tmp_path / "run"
    overrides = ["trainer.record_samples=true"]
    launcher, output = _kill_the_launcher_alone(start, run_dir, overrides, "a checkpoint",
                                                lambda: checkpoint_steps(run_dir))
    assert (
        output.count(f"trainwright: the launcher (pid {launcher.pid}) is gone; saving a checkpoint after this step")
        == 1
    ), output
    step = stopped_at(output)
    assert [last_sample_step(run_dir, r) for r in (0, 1)] == [step, step], output
    assert step < TOTAL_STEPS and checkpoint_steps(run_dir)[-1] == step
    assert checkpoint_problem(checkpoint_dir(run_dir, step)) is None
    assert not lock_file(run_dir).exists()

    result = completed(train(run_dir, *overrides, processes_=2))
    assert "taking over the lock" not in result.stderr  # released, not left behind
    assert_resumed_from(result.stdout + result.stderr, step)
    assert weights(run_dir) == weights(reference_2proc)


def test_workers_end_when_the_launcher_is_killed_before_training(reference_2proc, start, tmp_path):
    """Killed while its workers start (they meet at the launcher's store to connect), the launcher leaves them
    nothing to wait for: they end at once (exit 75, nothing to save yet) instead of waiting for each other
    until a timeout (30 min) while holding the run dir; the same command then trains from the start."""
    run_dir = tmp_path / "run"
    overrides = ["trainer.record_samples=true"]
    launcher, output = _kill_the_launcher_alone(start, run_dir, overrides, "the run dir's lock",
                                                lambda: lock_file(run_dir).exists())
    # rank 0 says why: its parent changed, or (looking too late for that) the launcher's store is gone
    said = re.search(r"trainwright: the launcher (.*) before training started; stopping", output)
    assert said and (said[1] == f"(pid {launcher.pid}) is gone" or said[1].startswith("is gone (its store at")), output
    assert "world_size=" not in output and not checkpoint_steps(run_dir)

    result = completed(train(run_dir, *overrides, processes_=2))
    assert resumed_from(result.stdout) is None
    assert weights(run_dir) == weights(reference_2proc)


def test_a_worker_started_after_its_launcher_died_ends(tmp_path):
    """A worker that only looks at its parent after the launcher died has been re-parented already (here:
    a worker's environment, with this test as its parent), so watching its parent tells nothing; the
    launcher's store is gone with the launcher, so it ends at once (exit 75) instead of trying to connect
    until the store's timeout (30 min) while holding the run dir."""
    run_dir, port = tmp_path / "run", processes.free_port()  # nothing listens there: the store is gone
    worker = cli_env(TORCHELASTIC_RUN_ID="gone", TORCHELASTIC_USE_AGENT_STORE="True", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                     GROUP_RANK="0")
    result = processes.run(command(run_dir), worker, timeout=60)
    assert result.returncode == EXIT_PREEMPTED, describe(result)
    assert result.stderr.strip().splitlines()[-1] == (
        f"trainwright: the launcher is gone (its store at 127.0.0.1:{port} refuses connections) before training "
        "started; stopping (nothing to save yet)"), describe(result)
    assert "world_size=" not in result.stdout and not checkpoint_steps(run_dir)


def test_sighup_to_the_launcher_stops_the_workers_with_a_checkpoint(reference_2proc, start, tmp_path):
    """A closed terminal: the launcher relays SIGHUP to the workers, which save and stop as on SIGTERM (the
    launcher exits 1 with a SignalException, as on SIGTERM)."""
    run_dir = tmp_path / "run"
    overrides = ["trainer.record_samples=true"]
    launcher = start(command(run_dir, overrides, processes_=2), cli_env(), name="hung-up")
    launcher.wait_for("a checkpoint", lambda: checkpoint_steps(run_dir), interval=0.01)
    launcher.signal(signal.SIGHUP)
    assert launcher.finish(timeout=60) == 1, launcher.describe()
    output = launcher.output()
    assert not processes.tagged_processes(launcher.tag), "a process of the launch is left running"
    assert output.count("trainwright: got SIGHUP; saving a checkpoint after this step") == 1, output
    step = stopped_at(output)
    assert step < TOTAL_STEPS and checkpoint_steps(run_dir)[-1] == step
    assert not lock_file(run_dir).exists()

    result = completed(train(run_dir, *overrides, processes_=2))
    assert "taking over the lock" not in result.stderr
    assert_resumed_from(result.stdout + result.stderr, step)
    assert weights(run_dir) == weights(reference_2proc)


def test_a_closed_terminal_stops_the_run_with_a_checkpoint_and_exit_75(reference, tmp_path):
    """The run's terminal closes (a pseudo-terminal whose other end is closed): the kernel sends SIGHUP, and
    every write to the terminal fails from then on. The run still saves, exits 75 and frees its lock."""
    run_dir = tmp_path / "run"
    master, terminal = pty.openpty()
    env, tag = processes.tagged_env(cli_env())

    def own_the_terminal() -> None:  # in the child, after setsid: its stdin, the terminal, becomes its controlling one
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        trainer = subprocess.Popen(
            [str(a) for a in command(run_dir)],
            cwd=REPO,
            env=env,
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            start_new_session=True,
            preexec_fn=own_the_terminal,
        )
        os.close(terminal)
        output = b""
        while not checkpoint_steps(run_dir):
            assert trainer.poll() is None, output.decode(errors="replace")
            if select.select([master], [], [], 0.01)[0]:
                output += os.read(master, 65536)
        os.close(master)  # the terminal hangs up
        master = -1
        assert trainer.wait(timeout=60) == EXIT_PREEMPTED, output.decode(errors="replace")
    finally:
        processes.kill_tagged(tag)
        if master >= 0:
            os.close(master)
    step = checkpoint_steps(run_dir)[-1]
    assert step < TOTAL_STEPS and checkpoint_problem(checkpoint_dir(run_dir, step)) is None
    assert not lock_file(run_dir).exists()
    result = completed(train(run_dir))
    assert "taking over the lock" not in result.stderr
    assert_resumed_from(result.stdout + result.stderr, step)
    assert weights(run_dir) == weights(reference)


# --- another number of processes -----------------------------------------------------------------


@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)], ids=["2to1", "1to2"])
def test_elastic_resume_on_another_process_count(reference, reference_2proc, start, tmp_path, first, then):
    """Stopped mid-epoch (SIGKILL once the step-150 checkpoint exists; the next one would be at 300) and
    resumed on another number of processes: every step trains on exactly the samples of the uninterrupted
    run's step, and the validation loss stays within float rounding of it."""
    run_dir = tmp_path / "run"
    overrides = ["trainer.record_samples=true", "checkpoint.every_epochs=null", "checkpoint.every_steps=150"]
    process = start(command(run_dir, overrides, processes_=first), cli_env(), name="killed")
    process.wait_for("the step-150 checkpoint", lambda: 150 in checkpoint_steps(run_dir))
    process.kill()
    assert f"world_size={first} device=cpu" in process.output()
    assert checkpoint_steps(run_dir) == [150]

    result = completed(train(run_dir, *overrides, processes_=then))
    assert f"world_size={then} device=cpu" in result.stdout
    step, epoch, batch = assert_resumed_from(result.stdout + result.stderr, 150)
    assert (epoch, batch) == (2, 50)  # mid-epoch: the second epoch (counted from 1), after 50 of its batches
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == TOTAL_STEPS and summary["status"] == "completed"

    samples, expected = step_samples(run_dir), step_samples(reference)
    assert sorted(expected) == list(range(1, TOTAL_STEPS + 1))
    assert sorted(samples) == sorted(expected)
    wrong = [s for s in expected if samples[s] != expected[s]]
    assert not wrong, f"steps that trained on other samples than the uninterrupted run: {wrong[:10]}..."
    for r in range(max(first, then)):  # each process's share is its slice of the global batch
        assert all(len(rec["indices"]) == 64 // (first if rec["step"] <= 150 else then)
                   for rec in read_jsonl(run_dir / "samples" / f"rank{r}.jsonl"))

    # The same batches, summed over 1 or 2 processes: the same curve up to float rounding.
    same_world = reference if then == 1 else reference_2proc
    val = {s: m["val/loss"] for s, m in metrics_by_step(run_dir).items() if "val/loss" in m}
    val_reference = {s: m["val/loss"] for s, m in metrics_by_step(same_world).items() if "val/loss" in m}
    assert sorted(val) == sorted(val_reference) == [100, 200, 300]
    for s in val:
        assert val[s] == pytest.approx(val_reference[s], rel=1e-5), (s, val[s], val_reference[s])


# --- resume with an LR schedule, gradient accumulation, bf16 ----------------------------------------

# 6400 training points, 2 epochs, the LR (and loss) logged every step, a checkpoint every 25 steps.
VARIANT_BASE = ["data.num_points=8000", "trainer.epochs=2", "checkpoint.every_steps=25", "logging.wandb=false",
                "trainer.log_every_steps=1"]
VARIANTS = {
    # 100 steps per epoch, 200 in all; lr 0.01 warms up over 30 steps, then decays to 0 at step 200
    "cosine_warmup": ["scheduler.name=cosine", "scheduler.warmup_steps=30"],
    # 200 micro-batches of 32 per epoch, 3 per step: 67 steps per epoch (the last one of 2 micro-batches)
    "grad_accum": ["data.batch_size=32", "trainer.grad_accum_steps=3", "scheduler.name=step",
                   "scheduler.step_size=20", "scheduler.gamma=0.5"],
    "bf16": ["trainer.mixed_precision=bf16"],
    # a closed-form schedule (LambdaLR): warm-up over 30 steps, then linear decay to 0.001 at step 200
    "linear_warmup": ["scheduler.name=linear", "scheduler.warmup_steps=30", "scheduler.min_lr=0.001"],
}
VARIANT_STEPS = {"cosine_warmup": 200, "grad_accum": 134, "bf16": 200, "linear_warmup": 200}


@pytest.fixture(scope="module")
def variant(tmp_path_factory):
    """`variant(name)`: an uninterrupted run and, beside it (both at once), a run killed after its first
    checkpoint and resumed; each variant runs once per module."""
    done: dict[str, dict] = {}

    def run_variant(name: str) -> dict:
        if name not in done:
            folder = tmp_path_factory.mktemp(name)
            reference_dir, run_dir = folder / "reference", folder / "run"
            overrides = VARIANTS[name]
            with processes.starter(folder) as start_:
                reference_run = start_(
                    command(reference_dir, overrides, base=VARIANT_BASE), cli_env(), name="reference"
                )
                killed = start_(command(run_dir, overrides, base=VARIANT_BASE), cli_env(), name="killed")
                killed.wait_for("the first checkpoint", lambda: checkpoint_steps(run_dir))
                killed.kill()
                killed_at = newest_valid_checkpoint(run_dir)
                resumed = train(run_dir, *overrides, base=VARIANT_BASE)
                reference_code = reference_run.finish()
            done[name] = {"reference": reference_dir, "run": run_dir, "killed_at": killed_at, "resumed": resumed,
                          "reference_code": reference_code, "reference_output": reference_run.output(),
                          "killed_output": killed.output()}
        return done[name]

    return run_variant


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_resume_is_bitwise_with_a_schedule_accumulation_or_bf16(variant, name):
    runs = variant(name)
    assert runs["reference_code"] == 0, runs["reference_output"]
    result = completed(runs["resumed"])
    precision = "bf16" if name == "bf16" else "no"
    assert f"world_size=1 device=cpu precision={precision}" in runs["killed_output"]
    killed_at = runs["killed_at"]
    assert killed_at is not None and 0 < killed_at < VARIANT_STEPS[name]
    assert_resumed_from(result.stdout + result.stderr, killed_at)
    summary = json.loads((runs["run"] / "summary.json").read_text())
    assert summary["step"] == VARIANT_STEPS[name]
    assert weights(runs["run"]) == weights(runs["reference"])
    assert training_curve(runs["run"]) == training_curve(runs["reference"])  # the LR of every step included


def _lr_by_step(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in read_jsonl(run_dir / "metrics.jsonl") if "lr" in r}


def test_cosine_warmup_follows_the_documented_schedule(variant):
    """README: linear warm-up over `warmup_steps`, then cosine decay to `min_lr` (0) at the run's last step.
    Warm-up from lr/W, rising by equal amounts to the full lr at step W."""
    runs = variant("cosine_warmup")
    assert runs["reference_code"] == 0, runs["reference_output"]
    lr, warmup, total = 0.01, 30, VARIANT_STEPS["cosine_warmup"]
    logged = _lr_by_step(runs["reference"])
    assert sorted(logged) == list(range(1, total + 1))
    for step, value in logged.items():
        if step <= warmup:
            expected = lr * (1 / warmup + (1 - 1 / warmup) * step / warmup)
        else:
            expected = lr * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2
        assert value == pytest.approx(expected, rel=1e-6, abs=1e-12), step
    assert logged[warmup] == pytest.approx(lr) and logged[total] == pytest.approx(0.0, abs=1e-12)
    assert all(logged[s] < logged[s + 1] for s in range(1, warmup))
    assert all(logged[s] > logged[s + 1] for s in range(warmup, total))


def test_step_schedule_multiplies_by_gamma_every_step_size_steps(variant):
    runs = variant("grad_accum")
    assert runs["reference_code"] == 0, runs["reference_output"]
    logged = _lr_by_step(runs["reference"])
    assert sorted(logged) == list(range(1, VARIANT_STEPS["grad_accum"] + 1))
    for step, value in logged.items():
        assert value == pytest.approx(0.01 * 0.5 ** (step // 20), rel=1e-9), step


# --- the recipe on resume, --resume, --restart ----------------------------------------------------


def test_recipe_change_that_alters_the_work_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    completed(train(run_dir, "trainer.max_steps=50"))
    saved_recipe = (run_dir / "recipe.yaml").read_text()
    result = train(run_dir, "trainer.max_steps=80", "model.hidden=[16, 8]", "seed=1")
    assert_user_error(result.returncode, result.stderr, "model.hidden", "seed (0 -> 1)", "--restart")
    assert (run_dir / "recipe.yaml").read_text() == saved_recipe


def test_allowed_recipe_change_extends_a_finished_run(tmp_path):
    run_dir = tmp_path / "run"
    completed(train(run_dir, "trainer.max_steps=50"))
    again = completed(train(run_dir, "trainer.max_steps=50"))
    assert "already complete" in again.stdout

    result = completed(train(run_dir, "trainer.max_steps=80", "checkpoint.keep_last=1"))
    assert "Recipe changed since the checkpoint (allowed): checkpoint.keep_last" in result.stdout
    assert_resumed_from(result.stdout + result.stderr, 50)
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 80
    assert checkpoint_steps(run_dir) == [80]  # keep_last=1 (the resumed-from one is kept only while training)


def test_resume_from_an_older_checkpoint_sets_later_ones_aside(reference, tmp_path):
    run_dir = tmp_path / "run"
    completed(train(run_dir, "trainer.max_steps=100"))
    assert checkpoint_steps(run_dir) == [50, 75, 100]
    result = completed(train(run_dir, extra=("--resume", str(checkpoint_dir(run_dir, 50)))))
    assert_resumed_from(result.stdout + result.stderr, 50)
    moved = list(run_dir.glob("superseded-*/step_*"))
    assert sorted(p.name for p in moved) == ["step_00000075", "step_00000100"]
    assert weights(run_dir) == weights(reference)


def test_checkpoints_hold_only_safetensors_and_json(reference):
    folders = [p for p in (reference / "checkpoints").iterdir() if p.is_dir()]
    assert len(folders) == 3  # keep_last
    for folder in folders:
        assert checkpoint_problem(folder) is None, folder
    for path in (reference / "checkpoints").rglob("*"):
        if path.is_file():
            assert path.suffix in (".safetensors", ".json"), path
            head = path.read_bytes()[:2]
            assert head[:1] != b"\x80" and head != b"PK", f"{path} looks like a pickle/torch.save file"


def test_restart_flag_keeps_the_old_run(tmp_path):
    run_dir = tmp_path / "run"
    completed(train(run_dir, "trainer.max_steps=30"))
    old_weights = weights(run_dir)
    result = completed(train(run_dir, "trainer.max_steps=30", extra=("--restart",)))
    assert "previous run was moved to" in result.stdout
    kept = list(tmp_path.glob("run.old-*"))
    assert len(kept) == 1 and (kept[0] / "model.safetensors").read_bytes() == old_weights
    assert resumed_from(result.stdout) is None

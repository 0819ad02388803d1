"""Checkpoints that never lose work: real training subprocesses killed and restarted.

Every test compares against an uninterrupted run of the same recipe with the same process count:
the final weights must be bitwise identical.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from trainwright.checkpoint.format import verify
from trainwright.tracking import read_metrics

ROOT = Path(__file__).resolve().parent.parent
CPU_2PROC = ROOT / "accelerate_configs" / "cpu_2proc.yaml"
# 6400 training points / 64 = 100 steps per epoch, 3 epochs; a checkpoint every 25 steps.
SMALL = ["data.num_points=8000", "trainer.epochs=3", "checkpoint.every_steps=25", "checkpoint.keep_last=3",
         "logging.wandb=false", "trainer.log_every_steps=10"]
TOTAL_STEPS = 300
EXIT_PREEMPTED = 75


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "ACCELERATE_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _command(run_dir: Path, overrides: list[str], processes: int) -> list[str]:
    args = ["-m", "trainwright", "train", "recipes/heart.yaml", *SMALL, *overrides, "--run-dir", str(run_dir)]
    if processes == 1:
        return [sys.executable, *args]
    port = str(random.Random(str(run_dir)).randint(20000, 40000))
    launcher = ["-m", "accelerate.commands.launch", "--config_file", str(CPU_2PROC), "--main_process_port", port]
    return [sys.executable, *launcher, *args]


def train(run_dir: Path, *overrides: str, processes: int = 1, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run training to its end (or error) and return the finished process."""
    cmd = _command(run_dir, list(overrides), processes) + list(extra)
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def start(run_dir: Path, *overrides: str, processes: int = 1) -> subprocess.Popen:
    """Start training in its own process group (so a kill reaches the launcher and every worker)."""
    return subprocess.Popen(_command(run_dir, list(overrides), processes), cwd=ROOT, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            stdin=subprocess.DEVNULL)


def checkpoint_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in folder.iterdir() if p.name.startswith("step_"))


def wait_for_checkpoints(process: subprocess.Popen, run_dir: Path, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(checkpoint_steps(run_dir)) < count:
        assert process.poll() is None, f"training ended before {count} checkpoints:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.01)


def kill_tree(process: subprocess.Popen, sig: int = signal.SIGKILL) -> str:
    """Signal the launcher and every process under it (torchrun starts workers in sessions of their own,
    so a process-group kill would miss them), as Slurm or the OOM killer would."""
    tree = [process.pid] + [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    output, _ = process.communicate(timeout=120)
    return output


def weights(run_dir: Path) -> bytes:
    return (run_dir / "model.safetensors").read_bytes()


def completed(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def training_curve(run_dir: Path) -> list[tuple]:
    """(step, key, value) of every logged metric but the wall-clock ones."""
    return [
        (r["step"], k, v)
        for r in read_metrics(run_dir / "metrics.jsonl")
        for k, v in r.items()
        if k not in ("step", "epoch") and not k.endswith(("_seconds", "per_second"))  # wall-clock figures differ
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted single-process run."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    completed(train(run_dir, "trainer.record_samples=true"))
    return run_dir


@pytest.fixture(scope="module")
def reference_2proc(tmp_path_factory) -> Path:
    """An uninterrupted run with 2 CPU processes (DDP over gloo)."""
    run_dir = tmp_path_factory.mktemp("reference2") / "run"
    result = completed(train(run_dir, processes=2))
    assert "world_size=2 device=cpu" in result.stdout
    return run_dir


def test_sigkill_after_second_checkpoint_resumes_bitwise_and_continues_wandb(reference, tmp_path):
    run_dir = tmp_path / "run"
    process = start(run_dir, "logging.wandb={mode: offline}")
    wait_for_checkpoints(process, run_dir, 2)
    kill_tree(process)
    resumed_at = checkpoint_steps(run_dir)[-1]
    assert resumed_at < TOTAL_STEPS

    result = completed(train(run_dir, "logging.wandb={mode: offline}"))
    assert f"Resuming from step {resumed_at}" in result.stdout
    assert weights(run_dir) == weights(reference)
    # the metrics go on along the same curve: no step logged twice, nothing rewound
    assert training_curve(run_dir) == training_curve(reference)
    # both W&B offline runs (killed and resumed) are one W&B run
    offline_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    assert all(p.name.endswith(f"-{run_id}") and (p / f"run-{run_id}.wandb").is_file() for p in offline_runs)


def test_sigkill_with_two_processes_resumes_bitwise(reference_2proc, tmp_path):
    run_dir = tmp_path / "run"
    process = start(run_dir, processes=2)
    wait_for_checkpoints(process, run_dir, 2)
    kill_tree(process)
    resumed_at = checkpoint_steps(run_dir)[-1]
    result = completed(train(run_dir, processes=2))
    assert "world_size=2 device=cpu" in result.stdout
    assert f"Resuming from step {resumed_at}" in result.stdout
    assert weights(run_dir) == weights(reference_2proc)


def test_kills_at_random_moments_including_during_saves(reference, tmp_path):
    """A checkpoint every 2 steps makes saving most of the work, so random kills often land inside a save."""
    run_dir = tmp_path / "run"
    rng = random.Random(1234)
    for _ in range(3):
        process = start(run_dir, "checkpoint.every_steps=2")
        wait_for_checkpoints(process, run_dir, 1)
        time.sleep(rng.uniform(0.0, 0.6))
        kill_tree(process)
    completed(train(run_dir, "checkpoint.every_steps=2"))
    assert weights(run_dir) == weights(reference)
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


def test_damaged_newest_checkpoint_is_reported_and_skipped(reference, tmp_path):
    run_dir = tmp_path / "run"
    process = start(run_dir)
    wait_for_checkpoints(process, run_dir, 3)
    kill_tree(process)
    *_, previous, last = checkpoint_steps(run_dir)
    newest = run_dir / "checkpoints" / f"step_{last:08d}"
    model_file = newest / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:-100])  # truncated

    result = completed(train(run_dir))
    assert f"checkpoint {newest} is damaged" in result.stderr
    assert f"Resuming from step {previous}" in result.stdout
    assert weights(run_dir) == weights(reference)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_stop_signal_saves_a_checkpoint_and_exits_75(reference, tmp_path, sig):
    run_dir = tmp_path / "run"
    process = start(run_dir)
    wait_for_checkpoints(process, run_dir, 1)
    process.send_signal(sig)
    for delay in (0.02, 0.3):  # more signals, during the save and after it, change nothing
        time.sleep(delay)
        process.send_signal(sig)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == EXIT_PREEMPTED, output
    stopped_at = checkpoint_steps(run_dir)[-1]
    assert f"Stopped at step {stopped_at}" in output
    assert verify(run_dir / "checkpoints" / f"step_{stopped_at:08d}") is None
    assert not (run_dir / "summary.json").exists()

    result = completed(train(run_dir))
    assert f"Resuming from step {stopped_at}" in result.stdout
    assert weights(run_dir) == weights(reference)


def test_stop_signal_with_two_processes_all_ranks_stop_at_one_step(reference_2proc, tmp_path):
    run_dir = tmp_path / "run"
    process = start(run_dir, processes=2)
    wait_for_checkpoints(process, run_dir, 1)
    output = kill_tree(process, signal.SIGTERM)  # the launcher and both workers get it, as under Slurm
    stopped_at = checkpoint_steps(run_dir)[-1]
    assert f"Stopped at step {stopped_at}" in output
    folder = run_dir / "checkpoints" / f"step_{stopped_at:08d}"
    assert verify(folder) is None
    assert {p.name for p in folder.glob("rng_*.safetensors")} == {"rng_0.safetensors", "rng_1.safetensors"}
    completed(train(run_dir, processes=2))
    assert weights(run_dir) == weights(reference_2proc)


def _epoch_samples(run_dir: Path, epoch: int) -> list[int]:
    samples = []
    for path in sorted((run_dir / "samples").glob("rank*.jsonl")):
        samples += [i for r in read_metrics(path) if r["epoch"] == epoch for i in r["indices"]]
    return samples


@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)], ids=["2to1", "1to2"])
def test_elastic_resume_on_another_process_count(reference, tmp_path, first, then):
    run_dir = tmp_path / "run"
    process = start(run_dir, "trainer.record_samples=true", processes=first)
    deadline = time.monotonic() + 120
    while not [s for s in checkpoint_steps(run_dir) if s % 100 and s > 100]:  # mid-epoch, in epoch 2
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    kill_tree(process)
    resumed_at = max(s for s in checkpoint_steps(run_dir) if s % 100)
    result = completed(train(run_dir, "trainer.record_samples=true", processes=then))
    assert f"world_size={then} device=cpu" in result.stdout
    assert "Resuming from step" in result.stdout

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == json.loads((reference / "summary.json").read_text())["step"] == TOTAL_STEPS
    assert summary["val/accuracy"] >= 0.9
    epoch = resumed_at // 100
    training_points = 6400
    assert sorted(_epoch_samples(run_dir, epoch)) == list(range(training_points))  # none repeated or skipped
    assert sorted(_epoch_samples(run_dir, epoch)) == sorted(_epoch_samples(reference, epoch))


def test_recipe_change_that_alters_the_work_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    completed(train(run_dir, "trainer.max_steps=50"))
    saved_recipe = (run_dir / "recipe.yaml").read_text()
    result = train(run_dir, "trainer.max_steps=80", "model.hidden=[16, 8]", "seed=1")
    assert result.returncode == 2
    assert "model.hidden" in result.stderr and "seed (0 -> 1)" in result.stderr
    assert "Traceback" not in result.stderr
    assert (run_dir / "recipe.yaml").read_text() == saved_recipe


def test_allowed_recipe_change_extends_a_finished_run(tmp_path):
    run_dir = tmp_path / "run"
    completed(train(run_dir, "trainer.max_steps=50"))
    again = completed(train(run_dir, "trainer.max_steps=50"))
    assert "already complete" in again.stdout

    result = completed(train(run_dir, "trainer.max_steps=80", "checkpoint.keep_last=1"))
    assert "Recipe changed since the checkpoint (allowed): checkpoint.keep_last" in result.stdout
    assert "Resuming from step 50" in result.stdout
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 80
    assert checkpoint_steps(run_dir) == [80]  # keep_last=1 (the resumed-from one is kept only while training)


def test_resume_from_an_older_checkpoint_sets_later_ones_aside(reference, tmp_path):
    run_dir = tmp_path / "run"
    completed(train(run_dir, "trainer.max_steps=100"))
    assert checkpoint_steps(run_dir) == [50, 75, 100]
    result = completed(train(run_dir, extra=("--resume", str(run_dir / "checkpoints" / "step_00000050"))))
    assert "Resuming from step 50" in result.stdout
    moved = list(run_dir.glob("superseded-*/step_*"))
    assert sorted(p.name for p in moved) == ["step_00000075", "step_00000100"]
    assert weights(run_dir) == weights(reference)


def test_checkpoints_hold_only_safetensors_and_json(reference):
    folders = [p for p in (reference / "checkpoints").iterdir() if p.is_dir()]
    assert len(folders) == 3  # keep_last
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
    assert "Resuming" not in result.stdout

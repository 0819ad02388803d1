"""slurm/*.sbatch end to end: preempt with SIGUSR1, checkpoint, requeue, resume, complete.

The cluster tests need a Slurm cluster that runs jobs on this machine (CI: `.ci/slurm-setup.sh`);
they are skipped when `sbatch` is missing or `sinfo` does not answer, and they FAIL instead when
TRAINWRIGHT_REQUIRE_SLURM=1 (`.ci/run` sets it, so CI cannot pass without them). The job runs as the
submitting user, so pytest's tmp_path works for the run dir and the log. Without a cluster, both batch
scripts also run as plain scripts and must stop cleanly on USR1.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import processes
from conftest import REQUIRE_SLURM_VAR, assert_resumed, checkpoint_dir, checkpoint_problem, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
SLURM = ROOT / "slurm"
RECIPE = ROOT / "recipes" / "heart.yaml"
# 16,000 training points / batch 64 = 250 steps per epoch: 2000 steps (several seconds, so that the signal
# sent after the first checkpoint lands well before the end), checkpoints every 50.
OVERRIDES = ["data.num_points=20000", "trainer.epochs=8", "checkpoint.every_steps=50", "logging.wandb=false"]
TOTAL_STEPS = 2000

pytestmark = pytest.mark.slow


@functools.cache
def _cluster_problem() -> str | None:
    """Why the Slurm tests cannot run here, or None."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH (no Slurm; CI sets up a cluster with .ci/slurm-setup.sh)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the Slurm cluster is not responding (sinfo: {exc})"
    if out.returncode != 0:
        return f"the Slurm cluster is not responding (sinfo: {out.stderr.strip() or out.returncode})"
    states = {s.strip().rstrip("*~#$@^-!%") for s in out.stdout.split()}
    if not states & {"idle", "mix", "alloc", "comp", "completing", "mixed", "allocated"}:
        return f"no usable Slurm node (sinfo states: {sorted(states) or 'none'})"
    return None


def needs_cluster(func):
    """Skip the test without a cluster, or fail it (saying why) when TRAINWRIGHT_REQUIRE_SLURM=1."""
    func = pytest.mark.slurm_cluster(func)
    problem = _cluster_problem()
    if problem is None:
        return func
    if os.environ.get(REQUIRE_SLURM_VAR) == "1":

        @functools.wraps(func)
        def cannot_run(*args, **kwargs):
            pytest.fail(f"{REQUIRE_SLURM_VAR}=1 (set by .ci/run) but this test needs a Slurm cluster: {problem}",
                        pytrace=False)

        return cannot_run
    return pytest.mark.skip(reason=problem)(func)


def _job_env(**changes: str) -> dict[str, str]:
    """The job uses the interpreter running the tests (its venv, else its bin dir on PATH)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "TORCHELASTIC_", processes.TAG_VAR))}
    env["TRAINWRIGHT_VENV"] = sys.prefix
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("TRAINWRIGHT_RECIPE", None)
    env.pop("TRAINWRIGHT_RUN_DIR", None)
    env.update(changes)
    return env


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _wait_for(what: str, check: Callable[[], Any], timeout: float, log: Path, interval: float = 0.2) -> Any:
    """Poll `check` until it returns something true; fail with the job log after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n--- job log:\n{_read(log)}")
        time.sleep(interval)


def _job(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict ({} once the job is gone)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        return {}
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def _first_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("step_*"))


def _node_not_completing() -> float | None:
    """The time (this machine's clock) at which the node was seen done with the last job, else None."""
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    return time.time() if out.returncode == 0 and "comp" not in out.stdout else None


def _wait_for_the_next_second(after: float) -> None:
    """Until this machine's clock shows a later whole second than `after`. slurmd revokes a requeued job's
    credential with a time stamp in whole seconds and refuses a start whose credential is not newer
    ("Job credential revoked": the job ends FAILED); the revocation happened before the node was seen
    done with the job, so a start in a later second is safe."""
    while int(time.time()) <= int(after):
        time.sleep(0.01)


def _summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


# --- without a cluster: the batch script's signal forwarding -------------------------------------


def test_train_sbatch_needs_recipe_and_run_dir(tmp_path):
    env = _job_env()
    env.pop("SLURM_JOB_ID", None)
    out = subprocess.run(["bash", str(SLURM / "train.sbatch"), str(RECIPE)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=30)
    assert out.returncode == 2
    assert "usage: sbatch slurm/train.sbatch RECIPE RUN_DIR" in out.stderr


def _outside_slurm_env(**changes: str) -> dict[str, str]:
    return {k: v for k, v in _job_env(**changes).items() if not k.startswith("SLURM_")}


def test_train_sbatch_forwards_usr1_outside_slurm(start, tmp_path):
    """Run as a plain script: USR1 to the shell reaches trainwright, which saves and exits 75."""
    run_dir = tmp_path / "run"
    script = start(["bash", SLURM / "train.sbatch", RECIPE, run_dir, *OVERRIDES], _outside_slurm_env(), name="script")
    script.wait_for("the first checkpoint", lambda: _first_checkpoint(run_dir))
    script.signal(signal.SIGUSR1)
    rc = script.finish(timeout=120)
    text = script.output()
    assert rc == 75, text
    assert "got SIGUSR1; forwarding it to trainwright" in text
    assert "trainwright: got SIGUSR1; saving a checkpoint after this step" in text
    stopped = re.search(r"Stopped at step (\d+)", text)
    assert stopped, text
    assert checkpoint_problem(checkpoint_dir(run_dir, int(stopped.group(1)))) is None
    assert "not running under Slurm; run the same command again to resume" in text
    assert not (run_dir / "summary.json").exists()


def test_train_multi_sbatch_forwards_usr1_outside_slurm(start, tmp_path):
    """Run as a plain script: USR1 to the shell goes to the launcher, which relays it to both workers
    (PET_SIGNALS_TO_HANDLE, set by the script); both save at one step and the script exits 75."""
    run_dir = tmp_path / "run"
    env = _outside_slurm_env(TRAINWRIGHT_MAIN_PORT=str(processes.free_port()))
    script = start(["bash", SLURM / "train_multi.sbatch", RECIPE, run_dir, *OVERRIDES, "trainer.record_samples=true"],
                   env, name="script")
    script.wait_for("the first checkpoint", lambda: _first_checkpoint(run_dir))
    script.signal(signal.SIGUSR1)
    rc = script.finish(timeout=180)
    text = script.output()
    assert rc == 75, text
    assert "world_size=2 device=cpu" in text
    assert "got SIGUSR1; forwarding it to the launcher" in text, text
    assert text.count("got SIGUSR1; saving a checkpoint after this step") == 1, text  # said by the main process only
    stopped = re.search(r"Stopped at step (\d+)", text)
    assert stopped, text
    step = int(stopped.group(1))
    assert [read_jsonl(run_dir / "samples" / f"rank{r}.jsonl")[-1]["step"] for r in (0, 1)] == [step, step]
    folder = checkpoint_dir(run_dir, step)
    assert checkpoint_problem(folder) is None
    assert {p.name for p in folder.glob("rng_*.safetensors")} == {"rng_0.safetensors", "rng_1.safetensors"}
    assert "training stopped (launcher exit 1 after SIGUSR1)" in text, text
    assert "not running under Slurm; run the same command again to resume" in text
    assert not (run_dir / "summary.json").exists()


# --- on the cluster: preempt, requeue, release, resume, complete --------------------------------


def _preempt_requeue_resume(tmp_path: Path, script: str, sbatch_args: list[str], **env_changes: str) -> tuple[str, int]:
    """Submit, send USR1 to the batch shell, check the requeue, release it, wait for completion."""
    run_dir, log = tmp_path / "run", tmp_path / "job.log"
    # the job's processes carry a tag (sbatch exports the environment), so whatever survives is killed
    env, tag = processes.tagged_env(_job_env(TRAINWRIGHT_MAIN_PORT=str(processes.free_port()), **env_changes))
    submit = subprocess.run(
        ["sbatch", "--parsable", f"--chdir={ROOT}", f"--output={log}", f"--job-name=test-{Path(script).stem}",
         *sbatch_args, str(SLURM / script), str(RECIPE), str(run_dir), *OVERRIDES],
        capture_output=True, text=True, env=env, timeout=30,
    )
    assert submit.returncode == 0, f"sbatch failed: {submit.stderr}"
    job_id = submit.stdout.strip().split(";")[0]
    finished = False
    try:
        # 1. Wait until it trains (first checkpoint written), then preempt it as Slurm would.
        _wait_for(
            f"job {job_id} to write its first checkpoint",
            lambda: _first_checkpoint(run_dir) or _job(job_id).get("JobState") in {"FAILED", "COMPLETED", "CANCELLED"},
            150, log,
        )
        assert not (run_dir / "summary.json").exists(), f"the run finished before it was signalled:\n{_read(log)}"
        subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True, timeout=30)

        # 2. The job saved, exited 75 and requeued itself: PENDING, Restarts=1, held until BeginTime. Its
        # Reason reads None until slurmctld's next scheduling pass looks at the requeued job (seen under load).
        requeued = _wait_for(
            f"job {job_id} to be requeued and looked at by the scheduler",
            lambda: (info := _job(job_id)).get("JobState") == "PENDING" and info.get("Restarts") == "1"
            and info.get("Reason") != "None" and info,
            60, log,
        )
        assert requeued["Reason"] == "BeginTime", requeued  # Slurm holds a requeued job (~2 minutes)
        text = _read(log)
        assert "trainwright: got SIGUSR1; saving a checkpoint after this step" in text, text
        stopped = re.search(r"Stopped at step (\d+): checkpoint saved in", text)
        assert stopped, text
        step = int(stopped.group(1))
        assert 0 < step < TOTAL_STEPS
        assert (run_dir / "checkpoints" / f"step_{step:08d}").is_dir()
        assert f"requeued job {job_id} (restart 1)" in text, text

        # 3. Release it now instead of waiting ~2 minutes; it resumes and completes. Not in the second of
        # the requeue's credential revocation (see _wait_for_the_next_second).
        _wait_for_the_next_second(_wait_for("the node to finish cleaning up", _node_not_completing, 60, log))
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=30)
        done = _wait_for(
            f"job {job_id} to complete after the restart",
            lambda: (info := _job(job_id)).get("JobState") in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"} and info,
            150, log, interval=0.5,
        )
        finished = True
        text = _read(log)
        assert done["JobState"] == "COMPLETED", f"{done}\n{text}"
        assert done["Restarts"] == "1"
        assert "restart 1:" in text, text
        assert_resumed(text, step)
        assert f"Run complete at step {TOTAL_STEPS}:" in text, text
        assert "finished (exit 0)" in text, text
        summary = _summary(run_dir)
        assert summary["status"] == "completed"
        assert summary["step"] == TOTAL_STEPS
        return text, step
    finally:
        if not finished:
            subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
        processes.kill_tagged(tag)


@needs_cluster
def test_train_sbatch_is_preempted_requeued_and_resumes(tmp_path):
    text, _ = _preempt_requeue_resume(tmp_path, "train.sbatch", [])
    assert "got SIGUSR1; forwarding it to trainwright" in text
    assert "trainwright stopped (exit 75 after SIGUSR1)" in text


@needs_cluster
def test_train_multi_sbatch_is_preempted_requeued_and_resumes(tmp_path):
    """Two processes: USR1 goes through accelerate's launcher to both workers."""
    text, _ = _preempt_requeue_resume(tmp_path, "train_multi.sbatch", ["--cpus-per-task=2"])
    assert "forwarding it to the launcher" in text, text
    assert text.count("got SIGUSR1; saving a checkpoint after this step") == 1, text  # said by the main process only
    assert "world_size=2" in text
    assert "training stopped (launcher exit 1 after SIGUSR1)" in text


@needs_cluster
def test_train_multinode_sbatch_is_preempted_requeued_and_resumes(tmp_path):
    """The multi-node script on the one-node test cluster (2 processes on its node): srun starts
    launch_node.sh, USR1 goes batch shell -> srun -> the node's launcher -> both workers."""
    text, _ = _preempt_requeue_resume(tmp_path, "train_multinode.sbatch", ["--nodes=1", "--cpus-per-task=2"],
                                      TRAINWRIGHT_PROCS_PER_NODE="2")
    assert "got SIGUSR1; forwarding it to srun" in text, text
    assert "--num_machines 1 --machine_rank 0 --num_processes 2" in text, text
    assert text.count("got SIGUSR1; saving a checkpoint after this step") == 1, text  # said by the main process only
    assert "world_size=2" in text
    assert "training stopped (srun exit 1 after SIGUSR1)" in text, text

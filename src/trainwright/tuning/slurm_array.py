"""`trainwright sweep SPEC --slurm`: a Slurm job array with one task per unfinished trial. Each task runs
its trial through slurm/train.sbatch, the preemptible single-run script (a checkpoint on SIGUSR1 before
the time limit, then `scontrol requeue` of that task), with the trial's overrides from DIR/trial_NNN.args.
Running the sweep command again without --slurm once the array is done prints the leaderboard."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from trainwright.errors import UserError
from trainwright.recipe.shipped import shipped_root
from trainwright.run.files import write_text_atomic
from trainwright.tuning.runner import Job

SCRIPT = "sweep.sbatch"


def train_script() -> Path:
    """The shipped slurm/train.sbatch (the installed package's copy, or the checkout's)."""
    script = shipped_root() / "slurm" / "train.sbatch"
    if not script.is_file():
        raise UserError(f"--slurm needs the shipped slurm/train.sbatch; not found at {script} (reinstall trainwright)")
    return script


def array_script(jobs: list[Job], folder: Path) -> str:
    tasks = ",".join(str(int(job.name.rsplit("_", 1)[1])) for job in jobs)
    recipe = shlex.quote(str(jobs[0].recipe))
    return f"""#!/usr/bin/env bash
# Written by `trainwright sweep --slurm`: task N trains {folder}/trial_NNN through slurm/train.sbatch
# (preemptible and self-requeueing), with the overrides in {folder}/trial_NNN.args.
#SBATCH --job-name={folder.name}
#SBATCH --array={tasks}
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#SBATCH --open-mode=append
#SBATCH --output={folder.absolute()}/slurm-%A_%a.out
set -uo pipefail
trial=$(printf 'trial_%03d' "$SLURM_ARRAY_TASK_ID")
mapfile -t overrides < {shlex.quote(str(folder.absolute()))}/"$trial.args"
export TRAINWRIGHT_VENV=${{TRAINWRIGHT_VENV:-{shlex.quote(sys.prefix)}}}
exec bash {shlex.quote(str(train_script()))} {recipe} {shlex.quote(str(folder.absolute()))}/"$trial" "${{overrides[@]}}"
"""


def submit_array(jobs: list[Job], folder: Path) -> int:
    """Write the args files and DIR/sweep.sbatch for the unfinished trials, and submit it."""
    pending = [job for job in jobs if job.completed() is None]
    if not pending:
        print(f"every trial of {folder} is complete; run the command without --slurm for the leaderboard")
        return 0
    if shutil.which("sbatch") is None:
        raise UserError("--slurm: sbatch is not on PATH (is this a Slurm login node?)")
    for job in pending:
        write_text_atomic(folder / f"{job.name}.args", "".join(f"{item}\n" for item in job.overrides))
    script = folder / SCRIPT
    write_text_atomic(script, array_script(pending, folder))
    result = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if result.returncode:
        raise UserError(f"sbatch {script} failed: {result.stderr.strip() or result.stdout.strip()}")
    job_id = result.stdout.strip().split(";")[0]
    print(f"Submitted job array {job_id} ({len(pending)} trials: {', '.join(job.name for job in pending)}); "
          f"logs in {folder}/slurm-{job_id}_N.out. When it is done, run the same command without --slurm for the "
          "leaderboard.")
    return 0

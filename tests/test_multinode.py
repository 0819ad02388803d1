"""Multi-node runs as far as one machine allows: the per-node command lines slurm/launch_node.sh builds
from Slurm's variables, and two launchers (machine ranks 0 and 1) forming one world of 2 that ends
bitwise equal to a 2-process run of one launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import processes
from conftest import REPO

NODE_SCRIPT = REPO / "slurm" / "launch_node.sh"
HEART = ["recipes/heart.yaml", "data.num_points=2000", "trainer.epochs=2", "logging.wandb=false"]

pytestmark = pytest.mark.slow


def _env(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TRAINWRIGHT_", "ACCELERATE_", "WANDB_"))}
    env.update(
        OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    )
    env.update(changes)
    return env


def _fake_scontrol(folder: Path) -> Path:
    """An `scontrol` that expands `show hostnames gpu[07-08]` as Slurm does (for machines without Slurm)."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] && printf "gpu07\\ngpu08\\n"\n')
    script.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("node", [0, 1])
def test_launch_node_builds_each_nodes_command_from_slurm_variables(tmp_path, node):
    env = _env(SLURM_NODEID=str(node), SLURM_NNODES="2", SLURM_JOB_NODELIST="gpu[07-08]", SLURM_JOB_ID="41234",
               TRAINWRIGHT_PROCS_PER_NODE="4", TRAINWRIGHT_ACCELERATE_CONFIG="accelerate_configs/fsdp_gpu.yaml",
               TRAINWRIGHT_DRY_RUN="1")
    env["PATH"] = f"{_fake_scontrol(tmp_path)}{os.pathsep}{env['PATH']}"
    out = subprocess.run(["bash", str(NODE_SCRIPT), "recipes/heart.yaml", "runs/x", "trainer.epochs=2"], env=env,
                         capture_output=True, text=True, timeout=30, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "accelerate", "launch", "--config_file", "accelerate_configs/fsdp_gpu.yaml",
        "--num_machines", "2", "--machine_rank", str(node), "--num_processes", "8",
        "--main_process_ip", "gpu07", "--main_process_port", str(20000 + 41234 % 20000),
        "-m", "trainwright", "train", "recipes/heart.yaml", "trainer.epochs=2", "--run-dir", "runs/x",
    ]


def test_launch_node_needs_slurm_variables(tmp_path):
    out = subprocess.run(["bash", str(NODE_SCRIPT), "recipes/heart.yaml", "runs/x"], env=_env(), capture_output=True,
                         text=True, timeout=30, cwd=REPO)
    assert out.returncode != 0 and "SLURM_NODEID is not set" in out.stderr


def test_two_launchers_with_machine_ranks_0_and_1_train_as_one_world(tmp_path):
    port = processes.free_port()
    run_dir = tmp_path / "two_nodes"
    nodes = [
        subprocess.Popen(["bash", str(NODE_SCRIPT), *HEART[:1], str(run_dir), *HEART[1:]], cwd=REPO, text=True,
                         env=_env(SLURM_NODEID=str(rank), SLURM_NNODES="2", TRAINWRIGHT_MAIN_ADDR="127.0.0.1",
                                  TRAINWRIGHT_MAIN_PORT=str(port)),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        for rank in (0, 1)
    ]
    try:
        outputs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert "world_size=2 device=cpu precision=no strategy=ddp" in outputs[0]  # machine rank 0 holds rank 0
    assert "Run complete at step 50" in outputs[0]

    single = tmp_path / "one_launcher"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(REPO / "accelerate_configs" / "cpu_2proc.yaml"), "--main_process_port", str(processes.free_port())]
    result = processes.run([*launcher, "-m", "trainwright", "train", *HEART, "--run-dir", single], _env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "world_size=2 device=cpu" in result.stdout
    assert (run_dir / "model.safetensors").read_bytes() == (single / "model.safetensors").read_bytes()

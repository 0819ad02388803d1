"""How a process of a launch leaves (src/trainwright/run/exiting.py), and the torch behaviour behind it."""

from __future__ import annotations

import re
import sys

import processes
from conftest import cli_env

# Two gloo processes: DDP-wrap a model, destroy the process group, report the gloo threads still running.
_GROUP_OUTLIVES_DESTROY = r"""
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
del model
dist.destroy_process_group()
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
os.write(1, f"rank {os.environ['RANK']} gloo threads after destroy: {sum('gloo' in n for n in names)}\n".encode())
"""


def test_torch_still_keeps_a_gloo_group_alive_after_destroy_process_group(tmp_path):
    """The reason for exiting.py. When this fails, torch frees the group again: the workaround can go."""
    script = tmp_path / "group.py"
    script.write_text(_GROUP_OUTLIVES_DESTROY)
    result = processes.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                            "--master_port", processes.free_port(), script], cli_env(), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = dict(re.findall(r"rank (\d) gloo threads after destroy: (\d+)", result.stdout))
    assert sorted(counts) == ["0", "1"] and all(int(count) > 0 for count in counts.values()), result.stdout


def test_leaving_after_a_group_runs_the_exit_handlers_flushes_and_keeps_the_code():
    code = ("import atexit, sys; from trainwright.run import exiting; atexit.register(print, 'handler ran'); "
            "print('written before', end=''); sys.stderr.write('and to stderr'); exiting.closed_a_group(); "
            "exiting.leave(75)")
    result = processes.run([sys.executable, "-c", code], cli_env(), timeout=60)
    assert result.returncode == 75
    assert result.stdout == "written beforehandler ran\n" and result.stderr == "and to stderr"

"""A 2-process DDP step: trainwright against a plain Accelerate DDP loop at the same per-process batch.

Both run in the same 2 CPU processes (accelerate_configs/cpu_2proc.yaml), interleaved: the heart epoch
with a global batch of 64 (32 per process). The plain loop is Accelerate's README loop over each
process's share of a shuffled order; trainwright's figure is its own `train/epoch_seconds`.

    accelerate launch --config_file accelerate_configs/cpu_2proc.yaml -m benchmarks.ddp WORKLOAD_ROOT REPEATS
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.measure import RESULT, Context, Samples, free_port, run
from benchmarks.workloads import FULL, QUICK, ROOT, workload_by_key

CONFIG = ROOT / "accelerate_configs" / "cpu_2proc.yaml"


@dataclass
class Ddp:
    plain: Samples = field(default_factory=Samples)
    trainwright: Samples = field(default_factory=Samples)
    steps: int = 0


def measure_ddp(context: Context, repeats: int) -> Ddp:
    """Launch the two processes once; they time both loops `repeats` times each, interleaved."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
               "--main_process_port", str(free_port()), "-m", "benchmarks.ddp", str(context.data_root), str(repeats)]
    _, stdout = run(command + (["--quick"] if context.quick else []), context)
    figures = json.loads(next(line for line in stdout.splitlines() if line.startswith(RESULT))[len(RESULT):])
    return Ddp(Samples(figures["plain"]), Samples(figures["trainwright"]), figures["steps"])


def _plain_epoch(accelerator, workload) -> tuple[float, int]:
    import torch

    from benchmarks.loops import setup

    s = setup(workload)
    model, optimizer = accelerator.prepare(s.model, s.optimizer)
    per_process, rank = s.batch_size // accelerator.num_processes, accelerator.process_index
    order = torch.randperm(len(s.inputs))
    model.train()
    accelerator.wait_for_everyone()
    started, steps = time.perf_counter(), 0
    for first in range(0, len(order) - s.batch_size + 1, s.batch_size):
        index = order[first + rank * per_process : first + (rank + 1) * per_process]
        optimizer.zero_grad()
        accelerator.backward(s.loss_fn(model(s.inputs[index]), s.targets[index]))
        optimizer.step()
        steps += 1
    return time.perf_counter() - started, steps


def _worker(data_root: Path, repeats: int, quick: bool) -> None:
    import torch.distributed as dist
    from accelerate import Accelerator

    from trainwright.recipe import load_recipe
    from trainwright.tracking import read_metrics
    from trainwright.training import train

    workload = workload_by_key("heart", data_root, QUICK if quick else FULL)
    accelerator = Accelerator(cpu=True)
    folder = [tempfile.mkdtemp(prefix="ddp-bench-")] if accelerator.is_main_process else [None]
    dist.broadcast_object_list(folder)
    plain, ours, steps = [], [], 0
    for repeat in range(repeats):
        seconds, steps = _plain_epoch(accelerator, workload)
        plain.append(seconds)
        run_dir = Path(folder[0]) / f"run{repeat}"
        train(load_recipe(workload.recipe, list(workload.overrides)), run_dir)
        if accelerator.is_main_process:
            ours.append(next(r["train/epoch_seconds"] for r in read_metrics(run_dir / "metrics.jsonl")
                             if "train/epoch_seconds" in r))
    if accelerator.is_main_process:
        print(RESULT + json.dumps({"plain": plain, "trainwright": ours, "steps": steps}), flush=True)
    accelerator.end_training()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), int(sys.argv[2]), "--quick" in sys.argv[3:])

"""Per-process memory of model + gradients + optimizer state under DDP and FSDP, through trainwright's own
parallel path (`trainwright.training.start.strategy_for(...).prepare`), for an MLP of ~54M parameters with AdamW.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fsdp_memory.py --out benchmarks/results-fsdp-memory.md

The driver launches itself twice on 2 CPU processes (accelerate_configs/cpu_2proc.yaml, then
fsdp_cpu_2proc.yaml); each worker builds the model from recipes/fashion_mnist_mlp.yaml with wider hidden
layers, trains 2 steps on random batches, then reports the bytes of the tensors it holds (its local
shards under FSDP) and its peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HIDDEN = "[4096, 4096, 4096, 4096]"  # 784-4096x4-10: 53.6M parameters
MiB = 1 << 20


def worker() -> None:
    import torch
    from torch.distributed.tensor import DTensor

    from trainwright.components import build_model, build_optimizer
    from trainwright.distributed.launcher import resolve_strategy
    from trainwright.distributed.processes import Processes
    from trainwright.recipe import load_recipe
    from trainwright.training.start import make_accelerator, strategy_for

    def local_bytes(tensors) -> int:
        return sum((t.to_local() if isinstance(t, DTensor) else t).nbytes for t in tensors if t is not None)

    recipe = load_recipe(
        ROOT / "recipes" / "fashion_mnist_mlp.yaml", [f"model.hidden={HIDDEN}", "optimizer.name=adamw"]
    )
    strategy = resolve_strategy(recipe)
    accelerator = make_accelerator("no")
    processes = Processes.from_accelerator(accelerator, strategy)
    torch.manual_seed(0)
    strategy = strategy_for(accelerator, processes, recipe.distributed, "no", compile_mode=None)
    model, optimizer = strategy.prepare(build_model(recipe), lambda module: build_optimizer(recipe, module))
    per_process = 64 // processes.world_size
    for _ in range(2):
        inputs, targets = torch.rand(per_process, 1, 28, 28), torch.randint(0, 10, (per_process,))
        accelerator.backward(torch.nn.functional.cross_entropy(model(inputs), targets))
        optimizer.step()  # gradients are kept (no zero_grad) so that they are counted below
    params = list(model.parameters())
    state = [value for per_param in optimizer.state.values() for value in per_param.values() if torch.is_tensor(value)]
    figures = {
        "strategy": strategy, "rank": processes.rank, "world_size": processes.world_size,
        "parameters": sum(p.numel() for p in params),  # a DTensor's numel is the whole tensor's
        "params_mib": local_bytes(params) / MiB,
        "grads_mib": local_bytes(p.grad for p in params) / MiB,
        "optimizer_mib": local_bytes(state) / MiB,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print("FIGURES " + json.dumps(figures), flush=True)
    accelerator.end_training()


def launch(config: str) -> list[dict]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "accelerate_configs" / config),
         "--main_process_port", str(port), __file__, "--worker"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )
    rows = [json.loads(line[8:]) for line in out.stdout.splitlines() if line.startswith("FIGURES ")]
    return sorted(rows, key=lambda r: r["rank"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the table (markdown) here too")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    import torch

    rows = launch("cpu_2proc.yaml") + launch("fsdp_cpu_2proc.yaml")
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 2 CPU processes (gloo), "
        f"MLP 784-4096x4-10 ({rows[0]['parameters'] / 1e6:.1f}M parameters, fp32), AdamW, after 2 steps.",
        "",
        "| strategy | rank | parameters MiB | gradients MiB | AdamW state MiB | total MiB | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        total = r["params_mib"] + r["grads_mib"] + r["optimizer_mib"]
        lines.append(f"| {r['strategy']} | {r['rank']} | {r['params_mib']:.0f} | {r['grads_mib']:.0f} | "
                     f"{r['optimizer_mib']:.0f} | {total:.0f} | {r['peak_rss_mib']:.0f} |")
    totals = {
        s: sum(r["params_mib"] + r["grads_mib"] + r["optimizer_mib"] for r in rows if r["strategy"] == s)
        for s in ("ddp", "fsdp")
    }
    lines += ["", f"FSDP / DDP tensor memory per process: {totals['fsdp'] / totals['ddp']:.2f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

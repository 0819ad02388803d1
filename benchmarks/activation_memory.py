"""Activation checkpointing's cost and saving: the memory autograd keeps for backward, peak RSS and time
per step of the transformer recipe (recipes/tiny_gpt.yaml's GPT, scaled up) with and without
`distributed.activation_checkpointing: [GPTBlock]`, through trainwright's own parallel path
(`trainwright.training.start.strategy_for(...).prepare`), on one CPU process.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/activation_memory.py --out benchmarks/results-activation-memory.md

Each variant runs in a fresh process (so that its peak RSS is its own), interleaved (off, on, off, on, ...):
the same initial weights and random token batches, AdamW, `STEPS` steps after one warm-up step. It reports
the bytes of the tensors saved for backward in one forward pass (counted by a saved_tensors_hooks pair:
with the wrapper, what the checkpointed blocks keep is only their inputs), the median seconds per step,
ru_maxrss at the end, and every step's loss (the curves must agree).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTEXT, BATCH, STEPS = 256, 32, 6
MODEL = ["model.vocab_size=256", f"model.context={CONTEXT}", "model.layers=4", "model.heads=4", "model.width=128"]
MiB = 1 << 20


def worker(recompute: bool) -> None:
    import torch
    import torch.nn.functional as F

    from trainwright.components import build_model, build_optimizer
    from trainwright.distributed.processes import Processes
    from trainwright.recipe import load_recipe
    from trainwright.training.start import make_accelerator, strategy_for

    overrides = [*MODEL, "optimizer.name=adamw"] + (
        ["distributed.activation_checkpointing=[GPTBlock]"] if recompute else []
    )
    recipe = load_recipe(ROOT / "recipes" / "tiny_gpt.yaml", overrides)
    accelerator = make_accelerator("no")
    processes = Processes.from_accelerator(accelerator, "ddp")
    torch.manual_seed(0)
    strategy = strategy_for(accelerator, processes, recipe.distributed, "no", compile_mode=None)
    model, optimizer = strategy.prepare(build_model(recipe), lambda module: build_optimizer(recipe, module))
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (BATCH, CONTEXT + 1), generator=generator) for _ in range(STEPS + 1)]
    saved = 0

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    losses, seconds = [], []
    for index, batch in enumerate(batches):
        started = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t) if index == 0 else contextlib.nullcontext():
            logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
            accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        if index:  # the first step is a warm-up
            seconds.append(time.perf_counter() - started)
            losses.append(loss.item())
    figures = {
        "recompute": recompute, "parameters": sum(p.numel() for p in model.parameters()),
        "saved_mib": saved / MiB, "step_seconds": statistics.median(seconds),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "losses": losses,
    }
    print("FIGURES " + json.dumps(figures), flush=True)


def measure(recompute: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--worker", "on" if recompute else "off"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return next(json.loads(line[8:]) for line in out.stdout.splitlines() if line.startswith("FIGURES "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the table (markdown) here too")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each variant (default 3)")
    parser.add_argument("--worker", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker == "on")
        return
    import torch

    runs = [measure(recompute) for _ in range(args.repeats) for recompute in (False, True)]
    rows = {flag: [r for r in runs if r["recompute"] is flag] for flag in (False, True)}

    def median(flag: bool, key: str) -> float:
        return statistics.median(r[key] for r in rows[flag])

    def spread(flag: bool, key: str, digits: int) -> str:
        values = [r[key] for r in rows[flag]]
        return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"

    gap = max(abs(a - b) for on in rows[True] for off in rows[False] for a, b in zip(on["losses"], off["losses"]))
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 CPU process, 1 thread. "
        f"recipes/tiny_gpt.yaml's GPT with {' '.join(MODEL)} ({runs[0]['parameters'] / 1e6:.2f}M parameters, fp32), "
        f"batch {BATCH} x {CONTEXT} tokens, AdamW; {STEPS} steps after a warm-up step, {args.repeats} interleaved runs "
        "each (median (range)).",
        "",
        "| activation_checkpointing | saved for backward MiB | seconds per step | peak RSS MiB |",
        "|---|---|---|---|",
    ]
    for flag, name in ((False, "off"), (True, "[GPTBlock]")):
        lines.append(f"| {name} | {median(flag, 'saved_mib'):.1f} | {spread(flag, 'step_seconds', 3)} | "
                     f"{spread(flag, 'peak_rss_mib', 0)} |")
    lines += [
        "",
        f"With / without: saved activations {median(True, 'saved_mib') / median(False, 'saved_mib'):.2f}, "
        f"time per step {median(True, 'step_seconds') / median(False, 'step_seconds'):.2f}, "
        f"peak RSS {median(True, 'peak_rss_mib') / median(False, 'peak_rss_mib'):.2f}. "
        f"Largest difference between the runs' per-step losses: {gap:.2e}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

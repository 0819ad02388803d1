"""`python -m benchmarks.lora [--repeats N] [--steps N] [--data DIR] [--out FILE]`: a LoRA fine-tune against a
full fine-tune of the same base on the same data (recipes/lora_sft.yaml as shipped, and with `adapter=null`),
each in a fresh process, interleaved: checkpoint bytes (the tensors, and the whole checkpoint folder), step
time (the median of the logged samples per second, as seconds per step of 32 items) and peak memory (the run's
own perf/peak_memory_gib: peak RSS on the CPU).

The base and the items are made first by examples/make_lora_base.py (or taken from --data, a folder it made)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.measure import Context, run
from benchmarks.workloads import ROOT

MODES = {"LoRA (r=8, shipped)": [], "full fine-tune (adapter=null)": ["adapter=null"]}
TENSORS = ("model.safetensors", "optimizer.safetensors")


def measure(mode: list[str], data: Path, steps: int, run_dir: Path, context: Context) -> dict[str, float]:
    """One training run of `steps` steps; its figures."""
    run([sys.executable, "-m", "trainwright", "train", str(ROOT / "recipes" / "lora_sft.yaml"),
         f"data.path={data / 'reverse.jsonl'}", f"data.tokenizer={data / 'base'}", f"model.pretrained={data / 'base'}",
         f"trainer.max_steps={steps}", f"checkpoint.every_steps={steps}", "trainer.log_every_steps=10",
         "logging.wandb=false", *mode, "--run-dir", str(run_dir)], context)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["perf/samples_per_second"] for r in records if "perf/samples_per_second" in r][1:]  # past warm-up
    checkpoint = run_dir / "checkpoints" / f"step_{steps:08d}"
    files = [p for p in checkpoint.rglob("*") if p.is_file()]
    return {"tensor_bytes": sum(p.stat().st_size for p in files if p.name in TENSORS),
            "checkpoint_bytes": sum(p.stat().st_size for p in files),
            "weights_bytes": (run_dir / "model.safetensors").stat().st_size,
            "step_ms": 1000 * 32 / statistics.median(rates),
            "peak_gib": max(r["perf/peak_memory_gib"] for r in records if "perf/peak_memory_gib" in r)}


def table(results: dict[str, list[dict[str, float]]]) -> str:
    """The medians over the repeats, one row a mode, in Markdown."""
    lines = ["| run | checkpoint tensors (model + optimizer) | checkpoint folder | final model.safetensors | "
             "step (32 items) | peak RSS |", "|---|---:|---:|---:|---:|---:|"]
    for name, repeats in results.items():
        med = {key: statistics.median(r[key] for r in repeats) for key in repeats[0]}
        spread = [round(r["step_ms"]) for r in repeats]
        lines.append(f"| {name} | {med['tensor_bytes'] / 1e3:,.1f} kB | {med['checkpoint_bytes'] / 1e3:,.1f} kB | "
                     f"{med['weights_bytes'] / 1e3:,.1f} kB | {med['step_ms']:.1f} ms ({spread}) | "
                     f"{med['peak_gib'] * 1024:,.0f} MiB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lora", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--steps", type=int, default=100, help="training steps a run (default 100)")
    parser.add_argument("--data", type=Path, help="a folder examples/make_lora_base.py made (default: make one)")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainwright-lora-bench-") as tmp:
        context = Context(Path(tmp), quick=False, threads=1)
        data = args.data
        if data is None:
            data = Path(tmp) / "lora_sft"
            run([sys.executable, str(ROOT / "examples" / "make_lora_base.py"), str(data)], context)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in MODES}
        for repeat in range(args.repeats):
            for i, (name, mode) in enumerate(MODES.items()):
                print(f"repeat {repeat + 1}/{args.repeats}: {name}", file=sys.stderr, flush=True)
                results[name].append(measure(mode, data, args.steps, Path(tmp) / f"run_{repeat}_{i}", context))
    markdown = table(results)
    print(markdown)
    if args.out is not None:
        args.out.write_text(markdown + "\n")


if __name__ == "__main__":
    main()

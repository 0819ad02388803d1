"""The transformer recipe (recipes/tiny_gpt.yaml) against a hand-written nanoGPT-style loop: the same
model and initial weights, windows, batch, context, AdamW and gradient clipping; one epoch per row,
each in a fresh process, interleaved round by round. trainwright's figure is its `train/epoch_seconds`.

    python -m benchmarks.gpt [--quick] [--repeats N] [--threads N]   (this table alone)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.measure import Context, Samples, job
from benchmarks.workloads import FULL, QUICK, Scale, gpt_workload

ROWS = ("nanogpt", "trainwright", "trainwright-nondeterministic")
LABELS = {
    "nanogpt": "hand-written nanoGPT-style loop (randperm windows, F.cross_entropy on .view(-1, V))",
    "trainwright": "trainwright `train(recipe)`: its train/epoch_seconds",
    "trainwright-nondeterministic": "trainwright with `trainer.deterministic=false`: its train/epoch_seconds",
}


@dataclass
class Gpt:
    title: str
    steps_tokens: int  # tokens per epoch (steps x batch x context)
    seconds: dict[str, Samples] = field(default_factory=lambda: {row: Samples() for row in ROWS})


def measure_gpt(context: Context, scale: Scale, repeats: int) -> Gpt:
    workload = gpt_workload(scale)
    tokens = 0
    result = Gpt(workload.title, 0)
    for repeat in range(repeats):
        for row in ROWS:
            figures = job(row, workload.key, context)
            result.seconds[row].values.append(figures["seconds"])
            if "tokens_per_second" in figures:
                tokens = round(figures["tokens_per_second"] * figures["seconds"])
            print(f"[gpt {repeat + 1}/{repeats}] {row}: {figures['seconds']:.2f} s", file=sys.stderr, flush=True)
    result.steps_tokens = tokens
    return result


def gpt_table(gpt: Gpt) -> str:
    mine, theirs = gpt.seconds["trainwright"], gpt.seconds["nanogpt"]
    ratios = Samples([a / b for a, b in zip(mine.values, theirs.values, strict=True)])
    rounds = len(mine.values)
    lines = [
        f"### {gpt.title}, one epoch ({rounds} interleaved round{'s' if rounds > 1 else ''})",
        "",
        "| loop | epoch s (median) | range s | tokens/s (median) |",
        "|---|---:|---:|---:|",
    ]
    for row, label in LABELS.items():
        samples = gpt.seconds[row]
        lines.append(
            f"| {label} | {samples.median:.2f} | {samples.spread()} | {gpt.steps_tokens / samples.median:,.0f} |"
        )
    lines += ["", f"trainwright / nanoGPT-style loop, time per epoch, per round: median {ratios.median:.3f} "
              f"(range {ratios.spread(3)}); {gpt.steps_tokens:,} tokens per epoch."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpt", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainwright-bench-") as tmp:
        context = Context(Path(tmp), args.quick, args.threads)
        print(gpt_table(measure_gpt(context, QUICK if args.quick else FULL, args.repeats)))


if __name__ == "__main__":
    main()

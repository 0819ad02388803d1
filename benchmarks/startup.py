"""Start-up: wall seconds of a 1-step heart run minus those of `python -c "import torch"`, interleaved."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.measure import Context, Samples, run
from trainwright.run.tracking import read_metrics

IMPORT_TORCH = "import resource, torch; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"


@dataclass
class Startup:
    import_torch: Samples = field(default_factory=Samples)
    one_step_run: Samples = field(default_factory=Samples)
    logged: Samples = field(default_factory=Samples)  # train/startup_seconds, where trainwright logs it
    torch_rss_mib: Samples = field(default_factory=Samples)  # peak RSS of a process that only imports torch


def trainwright_command() -> list[str]:
    """The `trainwright` console script beside this interpreter (`python -m trainwright` without one)."""
    script = Path(sys.executable).with_name("trainwright")
    return [str(script)] if script.exists() else [sys.executable, "-m", "trainwright"]


def measure_startup(context: Context, runs: int) -> Startup:
    result = Startup()
    for i in range(runs):
        seconds, stdout = run([sys.executable, "-c", IMPORT_TORCH], context)
        result.import_torch.values.append(seconds)
        result.torch_rss_mib.values.append(float(stdout.split()[-1]))
        run_dir = context.data_root / f"startup-{i}"
        command = [
            "train",
            "recipes/heart.yaml",
            "trainer.max_steps=1",
            "logging.wandb=false",
            "--run-dir",
            str(run_dir),
        ]
        seconds, _ = run(trainwright_command() + command, context)
        result.one_step_run.values.append(seconds)
        result.logged.values += [r["train/startup_seconds"] for r in read_metrics(run_dir / "metrics.jsonl")
                                 if "train/startup_seconds" in r]
    return result

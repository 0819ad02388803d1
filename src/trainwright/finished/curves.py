"""Loss curves from a run's metric records (metrics.jsonl): needs nothing but matplotlib."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from trainwright.run.files import atomic_open


def save_figure(fig: Figure, path: Path, replace: bool = True) -> None:
    """Write a figure as PNG atomically (a reader never sees half a picture; unless `replace`, only where
    nothing is: see atomic_path) and close it."""
    with atomic_open(path, "wb", replace) as file:
        fig.savefig(file, dpi=110, format="png")
    plt.close(fig)


def plot_curves(records: list[dict[str, Any]], path: Path) -> Path:
    """Training and validation loss against step; the first validation metric beside it."""
    metric = next((k for r in records for k in r if k.startswith("val/") and k != "val/loss"), "val/loss")
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for key, style in (("train/loss", "-"), ("val/loss", "o-")):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            loss_ax.plot(*zip(*points), style, label=key, markersize=3)
    loss_ax.set(xlabel="step", ylabel="loss", title="Loss")
    loss_ax.legend()
    points = [(r["step"], r[metric]) for r in records if metric in r]
    if points:
        metric_ax.plot(*zip(*points), "o-", color="tab:green", markersize=3)
    metric_ax.set(xlabel="step", ylabel=metric, title=metric)
    fig.tight_layout()
    save_figure(fig, path)
    return path

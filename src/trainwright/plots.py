"""Figures of a run: loss curves for every run, plus a picture of what the model learned."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from trainwright.data.bundle import TensorSplit  # noqa: E402
from trainwright.predictions import predicted_labels  # noqa: E402
from trainwright.inference import TrainedRun, model_outputs  # noqa: E402
from trainwright.tracking import read_metrics  # noqa: E402


def plot_curves(records: list[dict], path: Path) -> Path:
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_predictions(trained: TrainedRun, path: Path) -> Path | None:
    """2-D binary: predicted labels over the plane; 1-D regression: data and fitted line;
    other regression: predicted vs actual; images: a grid with predicted/actual names."""
    task, train = trained.bundle.task, trained.bundle.train
    inputs, outputs, targets = model_outputs(trained)
    fig, ax = plt.subplots(figsize=(6, 6))
    if task.kind == "binary" and inputs.dim() == 2 and inputs.shape[1] == 2:
        labels = predicted_labels(outputs, task, trained.output_kind)
        ax.scatter(inputs[:, 0], inputs[:, 1], c=labels, cmap="RdYlBu_r", s=2)
        ax.set(title="Predicted labels (validation points)", xlabel="x", ylabel="y", aspect="equal")
    elif task.kind == "regression" and inputs.dim() == 2 and inputs.shape[1] == 1 and isinstance(train, TensorSplit):
        ax.scatter(train.inputs[:, 0], task.decode(train.targets[:, 0]), s=8, c="b", label="training data")
        ax.scatter(inputs[:, 0], task.decode(targets[:, 0]), s=8, c="g", label="test data")
        ax.scatter(inputs[:, 0], task.decode(outputs[:, 0]), s=8, c="r", label="predictions")
        weight = dict(trained.model.named_parameters())
        if {"weight", "bias"} <= weight.keys():
            ax.set_title(f"fitted y = {weight['weight'].item():.3f} x + {weight['bias'].item():.3f}")
        ax.legend()
    elif task.kind == "regression":
        actual, predicted = task.decode(targets[:, 0]), task.decode(outputs[:, 0])
        ax.scatter(actual, predicted, s=8)
        low, high = float(actual.min()), float(actual.max())
        ax.plot([low, high], [low, high], "k--", linewidth=1)
        ax.set(title="Predicted vs actual", xlabel="actual", ylabel="predicted")
    elif task.kind == "multiclass" and inputs.dim() == 4:
        plt.close(fig)
        labels = predicted_labels(outputs, task, trained.output_kind)
        fig, axes = plt.subplots(3, 3, figsize=(7, 7))
        for i, cell in enumerate(axes.flat[: len(inputs)]):
            cell.imshow(inputs[i, 0], cmap="gray")
            cell.set_title(f"{task.class_names[labels[i]]}\n({task.class_names[int(targets[i])]})", fontsize=8)
            cell.axis("off")
        fig.suptitle("predicted (actual)")
    else:
        plt.close(fig)
        return None
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(trained: TrainedRun, run_dir: Path) -> list[Path]:
    """Write every figure that fits this run into `<run dir>/plots/`."""
    folder = run_dir / "plots"
    folder.mkdir(exist_ok=True)
    written = [plot_curves(read_metrics(run_dir / "metrics.jsonl"), folder / "loss_curves.png")]
    predictions = plot_predictions(trained, folder / "predictions.png")
    return written + ([predictions] if predictions else [])

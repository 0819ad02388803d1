"""Figures of a finished run: its loss curves, plus a picture of what the model learned (and, for
classifiers, the confusion matrix of its evaluation split)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from trainwright.data.bundle import TensorSplit
from trainwright.data.tasks import kind_of
from trainwright.finished.curves import plot_curves, save_figure
from trainwright.finished.inference import Run, load_run
from trainwright.finished.predictions import Predictions
from trainwright.run.directory import RunDir
from trainwright.run.tracking import read_metrics


def plot_predictions(
    trained: Run, inputs: torch.Tensor | dict[str, torch.Tensor], predictions: Predictions, path: Path
) -> Path | None:
    """2-D binary: predicted labels over the plane; 1-D regression: data and fitted line;
    other regression: predicted vs actual; images: a grid with predicted/actual names."""
    if predictions.actual is None or not isinstance(inputs, torch.Tensor):
        return None  # no plot without actual values, nor of named inputs (a language model's)
    task = trained.task
    train = trained.data.train
    actual = predictions.actual.reshape(len(predictions), -1)[:, 0]
    fig, ax = plt.subplots(figsize=(6, 6))
    kind = kind_of(task)
    if kind.single_output and inputs.dim() == 2 and inputs.shape[1] == 2:
        ax.scatter(inputs[:, 0], inputs[:, 1], c=predictions.label_indices, cmap="RdYlBu_r", s=2)
        ax.set(title="Predicted labels (validation points)", xlabel="x", ylabel="y", aspect="equal")
    elif kind.values and inputs.dim() == 2 and inputs.shape[1] == 1 and isinstance(train, TensorSplit):
        ax.scatter(train.inputs[:, 0], task.decode(train.targets[:, 0]), s=8, c="b", label="training data")
        ax.scatter(inputs[:, 0], actual, s=8, c="g", label="test data")
        ax.scatter(inputs[:, 0], predictions.values, s=8, c="r", label="predictions")
        weight = dict(trained.model.named_parameters())
        if {"weight", "bias"} <= weight.keys():
            ax.set_title(f"fitted y = {weight['weight'].item():.3f} x + {weight['bias'].item():.3f}")
        ax.legend()
    elif kind.values:
        ax.scatter(actual, predictions.values, s=8)
        low, high = float(actual.min()), float(actual.max())
        ax.plot([low, high], [low, high], "k--", linewidth=1)
        ax.set(title="Predicted vs actual", xlabel="actual", ylabel="predicted")
    elif kind.classifier and not kind.single_output and inputs.dim() == 4:
        plt.close(fig)
        fig, axes = plt.subplots(3, 3, figsize=(7, 7))
        for i, cell in enumerate(axes.flat[: len(inputs)]):
            cell.imshow(inputs[i, 0], cmap="gray")
            cell.set_title(f"{predictions.labels[i]}\n({predictions.class_name(int(actual[i]))})", fontsize=8)
            cell.axis("off")
        fig.suptitle("predicted (actual)")
    else:
        plt.close(fig)
        return None
    fig.tight_layout()
    save_figure(fig, path)
    return path


def confusion_counts(predictions: Predictions) -> torch.Tensor:
    """(classes, classes): row i, column j counts the items of actual class i that the model labelled j."""
    count = len(predictions.class_names())
    if predictions.actual is None:
        raise ValueError("a confusion matrix needs the items' actual classes")
    actual = predictions.actual.reshape(len(predictions), -1)[:, 0].long()
    return torch.bincount(actual * count + predictions.label_indices, minlength=count * count).reshape(count, count)


def plot_confusion_matrix(predictions: Predictions, path: Path) -> Path:
    """Classifiers: how many items of each actual class (rows) the model labelled as each class (columns)."""
    names = predictions.class_names()
    count, cells = len(names), confusion_counts(predictions)
    side = min(4 + 0.5 * count, 16)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(cells, cmap="Blues")
    ax.set(title=f"Confusion matrix ({len(predictions)} items)", xlabel="predicted", ylabel="actual",
           xticks=range(count), yticks=range(count))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticklabels(names)
    if count <= 30:  # the counts themselves, where they fit
        high = int(cells.max())
        for (row, column), value in zip(torch.cartesian_prod(torch.arange(count), torch.arange(count)).tolist(),
                                        cells.flatten().tolist()):
            ax.text(column, row, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > high / 2 else "black")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_run(run: RunDir) -> list[Path]:
    """Write every figure that fits this run into `<run dir>/plots/`: the loss curves (also while the run
    goes on), and the predictions of a finished run (classifiers: also its confusion matrix)."""
    run.plots.mkdir(exist_ok=True)
    written = [plot_curves(read_metrics(run.metrics_file), run.loss_curves)]
    if not run.model_file.is_file():
        return written
    trained = load_run(run)
    kind = kind_of(trained.task)
    if not (kind.classifier or kind.values):  # text, or a task the model scores: the loss curves say it
        return written
    inputs, predictions = trained.predict_split()
    drawn = plot_predictions(trained, inputs, predictions, run.predictions_plot)
    written += [drawn] if drawn else []
    if kind.classifier:
        written.append(plot_confusion_matrix(predictions, run.confusion_plot))
    return written

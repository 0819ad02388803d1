"""`trainwright plot` on a CV or sweep folder: the comparison of its runs, in DIR/plots/.

  cv:    each fold's final value of every validation metric, with the mean as a line (cv_metrics.png)
  sweep: the spec's metric against each swept key, one panel per key (sweep_<metric>.png); values that
         are not numbers (lists, names) are placed in the order the spec lists them
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt

from trainwright.errors import UserError
from trainwright.finished.curves import save_figure
from trainwright.tuning import cv, sweep


def is_study(folder: Path) -> bool:
    return (folder / cv.SPEC_FILE).is_file() or (folder / sweep.SPEC_FILE).is_file()


def plot_study(folder: Path) -> list[Path]:
    """Draw the comparison of a CV or sweep folder (its summary must exist: the study has run)."""
    is_cv = (folder / cv.SPEC_FILE).is_file()
    summary = folder / (cv.SUMMARY_FILE if is_cv else sweep.RESULTS_FILE)
    if not summary.is_file():
        raise UserError(
            f"{folder}: the {'cv' if is_cv else 'sweep'} has not finished ({summary.name} is not written yet); run "
            "its command again to finish it, then plot"
        )
    (folder / "plots").mkdir(exist_ok=True)
    if is_cv:
        return [_plot_cv(json.loads(summary.read_text()), folder / "plots" / "cv_metrics.png")]
    results = json.loads(summary.read_text())
    path = folder / "plots" / f"sweep_{results['metric']['name'].replace('/', '_')}.png"
    return [_plot_sweep(results, path)]


def _plot_cv(summary: dict, path: Path) -> Path:
    names = list(summary["mean"])
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.5), squeeze=False)
    folds = list(summary["folds"])
    for ax, name in zip(axes[0], names):
        ax.bar(folds, [summary["folds"][fold].get(name, float("nan")) for fold in folds], color="tab:blue")
        ax.axhline(summary["mean"][name], color="k", linestyle="--",
                   label=f"mean {summary['mean'][name]:.4f} ± {summary['std'][name]:.4f}")
        ax.set(title=name, xlabel="fold")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _plot_sweep(results: dict, path: Path) -> Path:
    metric, trials = results["metric"]["name"], results["trials"]
    keys = list(trials[0]["values"]) if trials else []
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(4 * max(len(keys), 1), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        shown = [trial for trial in trials if trial[metric] is not None]
        texts = list(dict.fromkeys(trial["values"][key] for trial in sorted(shown, key=lambda t: t["trial"])))
        numeric = all(_is_number(text) for text in texts)
        xs = [float(t["values"][key]) if numeric else texts.index(t["values"][key]) for t in shown]
        ax.scatter(xs, [t[metric] for t in shown])
        if numeric and min(xs) > 0 and max(xs) / min(xs) >= 100:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(texts)), texts, fontsize=8)
        ax.set(xlabel=key, ylabel=metric)
    fig.suptitle(f"{metric} per trial ({results['metric']['goal']})")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

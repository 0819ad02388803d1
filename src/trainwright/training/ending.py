"""How a training run ends: its Outcome, and the summary.json of a completed one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainwright.checkpoint.format import TrainState
from trainwright.recipe import Recipe
from trainwright.training import early_stopping


@dataclass
class Outcome:
    """How a `train` ended: 'completed', 'already-completed' (nothing to do) or 'preempted' (resumable)."""

    status: str
    summary: dict[str, Any]


def completed_summary(
    recipe: Recipe, state: TrainState, steps_per_epoch: int, model_summary: dict[str, Any] | None
) -> dict[str, Any]:
    """summary.json of a run trained to its end (or stopped early, or by a callback)."""
    summary = {
        "status": "completed",
        "recipe": recipe.name,
        "step": state.step,
        "epoch": state.epoch_number(),
        "samples_seen": state.samples_seen,
        "steps_per_epoch": steps_per_epoch,
        "model_summary": model_summary,
        **state.val_metrics,
        **(state.test_metrics if recipe.trainer.test_at_end else {}),
    }
    if state.stopped_early_epoch and (rule := recipe.trainer.early_stopping) is not None:
        summary["stopped_early"] = early_stopping.stopped_early(rule, state)
    if state.stopped_by_callback:
        summary["stopped_by_callback"] = {
            "callback": state.stopped_by_callback, "reason": state.stop_reason,
            "step": state.step, "epoch": state.epoch_number(),
        }
    return summary

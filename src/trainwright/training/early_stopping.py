"""Early stopping (trainer.early_stopping): end the run once the monitored validation metric has not
improved by more than `min_delta` for `patience` validations in a row.

Its counters are fields of TrainState, so every checkpoint carries them and a run killed while it waits
out its patience stops at the same epoch as an uninterrupted one. It acts only after a validation: the
training step is untouched."""

from __future__ import annotations

from typing import Any

from trainwright.checkpoint.format import TrainState
from trainwright.recipe import EarlyStoppingConfig


def improves(value: float, best: float | None, config: EarlyStoppingConfig) -> bool:
    """Whether `value` beats `best` by more than min_delta in the config's direction (the first value
    always does; NaN never does)."""
    if best is None:
        return value == value
    return value < best - config.min_delta if config.mode == "min" else value > best + config.min_delta


def observe(config: EarlyStoppingConfig, state: TrainState, more_to_train: bool) -> bool:
    """Take the validation just recorded in `state` (at the end of `state.epoch`) into account; returns
    whether the run stops now (never when `more_to_train` is false: the run ends anyway)."""
    value = state.val_metrics[config.monitor]
    if improves(value, state.early_best, config):
        state.early_best, state.early_best_epoch, state.early_waited = value, state.epoch, 0
    else:
        state.early_waited += 1
    if more_to_train and state.early_waited >= config.patience:
        state.stopped_early_epoch = state.epoch
    return bool(state.stopped_early_epoch)


def stopped_early(config: EarlyStoppingConfig, state: TrainState) -> dict[str, Any]:
    """summary.json's `stopped_early`: at which epoch and why."""
    best = "no finite value" if state.early_best is None else (
        f"its best {state.early_best:.6g} (epoch {state.early_best_epoch})"
    )
    return {
        "epoch": state.stopped_early_epoch,
        "monitor": config.monitor,
        "mode": config.mode,
        "best": state.early_best,
        "best_epoch": state.early_best_epoch,
        "patience": config.patience,
        "min_delta": config.min_delta,
        "reason": f"{config.monitor} did not improve on {best} by more than {config.min_delta:g} for "
                  f"{config.patience} validation(s) in a row",
    }

"""When to save: the one place that decides it."""

from __future__ import annotations

import math

from trainwright.recipe import CheckpointConfig


class SavePolicy:
    """Save every `every_steps` optimizer steps, at the end of every `every_epochs`-th epoch, when a stop
    signal arrived and at the end of the run; never the same step twice."""

    def __init__(self, config: CheckpointConfig) -> None:
        self.every_steps = config.every_steps
        self.every_epochs = config.every_epochs
        self.last_saved_step = -1

    def should_save(
        self, step: int, epoch: int, *, end_of_epoch: bool = False, stopping: bool = False, finished: bool = False
    ) -> bool:
        """Whether the state after optimizer step `step` (in `epoch`, counted after an epoch ends) is saved."""
        if step == self.last_saved_step:
            return False
        if stopping or finished:
            return True
        if self.every_steps and step % self.every_steps == 0:
            return True
        return end_of_epoch and bool(self.every_epochs and epoch % self.every_epochs == 0)

    def next_due(self, step: int) -> float:
        """The first step after `step` that `every_steps` saves (inf when it is off); the other saves come at
        the end of an epoch, a stop or the end of the run, which the loop knows of itself."""
        return (step // self.every_steps + 1) * self.every_steps if self.every_steps else math.inf

    def saved(self, step: int) -> None:
        """Record that the state at `step` is on disk (saved now, or the checkpoint a run resumed from)."""
        self.last_saved_step = step

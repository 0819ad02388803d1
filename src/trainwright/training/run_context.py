"""RunContext: what callbacks (callbacks.py, and the built-in profiler) may read of a run and do to it, built
and kept current by the trainer, so that they depend on this small value and never on the trainer itself.

It holds the live training state (the trainer's own `TrainState`: steps, epoch, position, validation
metrics), the run's fixed facts (its step counts, processes, model, optimizer, run dir) and the three things
a callback may cause: a metric logged, a request to stop, and the name of the checkpoint kept when one of its
hooks fails."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from trainwright.checkpoint.format import TrainState
    from trainwright.distributed.processes import Processes
    from trainwright.run.stopping import StopSignals
    from trainwright.run.tracking import Tracker


@dataclass(eq=False)
class RunContext:
    """A run as its callbacks see it. The trainer sets `state` anew when it resumes and `tracker` when
    training starts; the loop's own updates of the state are what callbacks read (nothing is copied per step)."""

    state: TrainState
    total_steps: int  # optimizer steps of the whole run
    steps_per_epoch: int
    processes: Processes
    model: torch.nn.Module  # unwrapped from DDP
    optimizer: torch.optim.Optimizer
    run_dir: Path
    stops: StopSignals
    checkpoint_kept: Callable[[], str]  # which checkpoint the run keeps, for a message that ends it
    tracker: Tracker | None = None  # from the start of training

    def log(self, metrics: Mapping[str, float]) -> None:
        """Record `metrics` at the current step as the run's own (the main process only; see RunView.log)."""
        if not self.processes.is_main:
            return
        values = {str(name): float(value) for name, value in metrics.items()}
        if taken := sorted({"step", "epoch"} & values.keys()):
            raise ValueError(f"log() got {taken}: the record's own keys; use other names")
        assert self.tracker is not None, "a callback logged before training started"
        self.tracker.log(values, self.state.step, self.state.epoch_number())

    def request_stop(self, callback: str, reason: str) -> None:
        """`callback` asks the run to end as completed (see RunView.request_stop)."""
        self.stops.request_finish(callback, str(reason))

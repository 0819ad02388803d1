"""What a run shows while it trains (`logging.progress`): a tqdm bar with the loss on a terminal, and one
line per log interval and per validation where stderr is a file or a pipe (a cluster job's log)."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm

from trainwright.recipe import Recipe

Metrics = dict[str, float]


def resolve_mode(mode: str, is_main: bool, stream: TextIO) -> str:
    """`bar`, `lines` or `off` for `logging.progress` (`auto`: the bar on a terminal, lines elsewhere); other
    processes than the main one show nothing."""
    if not is_main:
        return "off"
    if mode == "auto":
        return "bar" if stream.isatty() else "lines"
    return mode


def clock(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def number(value: float) -> str:
    """A metric value for a progress line: 4 significant digits (integers as they are)."""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.4g}"
    return f"{value:g}" if isinstance(value, float) else str(value)


class Progress:
    """The run's progress for its user, fed like a metrics sink (Tracker.log) on the main process.

    `start_step`: the step the run starts or resumes at. The time left is measured from the end of the
    launch's first step (train/startup_seconds), so start-up time does not count; the speed shown is the
    interval's perf/tokens_per_second or perf/samples_per_second (throughput.py)."""

    def __init__(
        self, mode: str, total_steps: int, steps_per_epoch: int, start_step: int, stream: TextIO | None = None
    ) -> None:
        self.mode, self.stream = mode, stream if stream is not None else sys.stderr
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.epochs = math.ceil(total_steps / steps_per_epoch)
        self.start_step, self.started = start_step, time.perf_counter()
        self._bar: Any = None

    @classmethod
    def of_run(cls, recipe: Recipe, is_main: bool, total_steps: int, steps_per_epoch: int, start_step: int) -> Progress:
        """The progress of a run of `recipe` on stderr (shown by the main process only)."""
        return cls(resolve_mode(recipe.logging.progress, is_main, sys.stderr), total_steps, steps_per_epoch, start_step)

    def bar(self, epoch: int, done: int) -> tqdm:
        """The bar of epoch `epoch` (0-based), `done` of its steps already done (disabled unless in bar mode)."""
        self._bar = tqdm(
            total=self.steps_per_epoch, initial=done, desc=f"epoch {epoch + 1}/{self.epochs}",
            disable=self.mode != "bar", leave=False, file=self.stream,
        )
        return self._bar

    def log(self, metrics: Metrics, step: int, epoch: int) -> None:
        """Show the training loss (a log interval) or the validation metrics among `metrics`."""
        if self.mode == "off":
            return
        if "train/startup_seconds" in metrics:  # the launch's first step: the time left counts from here
            self.start_step, self.started = step, time.perf_counter()
        if "train/loss" in metrics:
            if self.mode == "bar":
                if self._bar is not None and not self._bar.disable:
                    self._bar.set_postfix(loss=number(metrics["train/loss"]), refresh=False)
            else:
                self._print(self._train_line(metrics, step, epoch))
        validation = {key: value for key, value in metrics.items() if key.startswith(("val/", "test/"))}
        if validation and self.mode == "lines":
            shown = " ".join(f"{key}={number(value)}" for key, value in validation.items())
            what = "test" if all(key.startswith("test/") for key in validation) else "validation"
            self._print(f"{what} step {step}/{self.total_steps} epoch {epoch}/{self.epochs}: {shown}")

    def _train_line(self, metrics: Metrics, step: int, epoch: int) -> str:
        parts = [f"step {step}/{self.total_steps}", f"epoch {epoch}/{self.epochs}",
                 f"loss={number(metrics['train/loss'])}"]
        if "lr" in metrics:
            parts.append(f"lr={metrics['lr']:.4g}")
        for key, shown in (("perf/tokens_per_second", "tokens/s"), ("perf/samples_per_second", "samples/s")):
            if key in metrics:
                parts.append(f"{shown}={metrics[key]:.1f}")
                break
        if "perf/mfu" in metrics:
            parts.append(f"mfu={metrics['perf/mfu']:.1%}")
        done = step - self.start_step
        if done > 0:
            left = (time.perf_counter() - self.started) / done * (self.total_steps - step)
            parts.append(f"left={clock(left)}")
        return " ".join(parts)

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Nothing to release (the bars close with their epochs)."""

"""trainer.profile: record optimizer steps `start_step` .. `start_step + steps - 1` with torch.profiler, a
built-in callback (callbacks.py), so a run without it does no profiling work at all.

Each process writes its trace to `<run dir>/profile/rank<R>.<start_step>.pt.trace.json` (Chrome/Perfetto
trace format, a name TensorBoard's profiler plugin reads: `tensorboard --logdir <run dir>/profile`), each
recorded step marked `ProfilerStep#<step>`; the main process prints the operators that took the most
time. The trace is written once the last step of the window is done (or the run ends inside it: then it
holds the steps recorded). A resumed run records the steps of the window it trains, unless its process's
trace is there already (a run resumed after the window, or from a checkpoint inside it after the trace
was written, does not profile again)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerAction, ProfilerActivity, profile

from trainwright.recipe import ProfileConfig
from trainwright.run.directory import RunDir
from trainwright.run.files import atomic_path
from trainwright.training.callbacks import Callback, RunView

TOP_OPERATORS = 15  # rows of the table printed at the end of the window


def trace_file(run_dir: Path, rank: int, start_step: int) -> Path:
    return RunDir(run_dir).profile / f"rank{rank}.{start_step}.pt.trace.json"


def _record_every_step(_: int) -> ProfilerAction:
    """A schedule that records every step: with a schedule torch marks each step (`ProfilerStep#N`)."""
    return ProfilerAction.RECORD


class Profiler(Callback):
    """Profiles the window of optimizer steps the recipe names (see the module's docstring)."""

    def __init__(self, config: ProfileConfig) -> None:
        self.first = config.start_step
        self.last = config.start_step + config.steps - 1
        self._profile: profile | None = None
        self._since = 0  # the first step being recorded

    def on_fit_start(self, run: RunView) -> None:
        self._start_before(run.step + 1, run)

    def on_step_end(self, run: RunView) -> None:
        if self._profile is None:
            self._start_before(run.step + 1, run)
        elif run.step >= min(self.last, run.total_steps):
            self._finish(run)
        else:
            self._profile.step()  # the next step's mark: ProfilerStep#<run.step + 1>

    def on_fit_end(self, run: RunView) -> None:
        if self._profile is not None:  # the run ended inside the window
            self._finish(run)

    def _start_before(self, step: int, run: RunView) -> None:
        """Start recording when `step`, the next step, is in the window and no trace of it is there."""
        if not self.first <= step <= self.last or trace_file(run.run_dir, run.rank, self.first).exists():
            return
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        self._profile = profile(activities=activities, schedule=_record_every_step, record_shapes=True)
        self._profile.step_num = self._since = step  # the marks count trainwright's steps
        self._profile.start()

    def _finish(self, run: RunView) -> None:
        """Stop recording, write this process's trace and (main process) print the top operators."""
        recorded, self._profile = self._profile, None
        assert recorded is not None  # called while recording
        recorded.stop()
        path = trace_file(run.run_dir, run.rank, self.first)
        path.parent.mkdir(exist_ok=True)
        with atomic_path(path) as tmp:
            recorded.export_chrome_trace(str(tmp))
        if run.is_main:
            by = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
            table = recorded.key_averages().table(sort_by=by, row_limit=TOP_OPERATORS)
            steps = f"optimizer steps {self._since}-{run.step}"
            print(f"trainer.profile: {steps}, trace in {path.parent}\n{table}", flush=True)

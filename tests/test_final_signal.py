"""A stop signal that arrives while a finished run writes its final files lets it finish and says so; a second
signal while the first one's message is written is not said again."""

from __future__ import annotations

import io
import os
import signal
import sys
import time

import pytest
import torch

from reliability_helpers import HEART, TINY, call
from trainwright.distributed.processes import Processes
from trainwright.run.stopping import StopSignals

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")


def test_sigterm_during_the_final_write_finishes_the_run_and_says_so(capsys, tmp_path, monkeypatch):
    import trainwright.checkpoint.weights as weights_module

    real_save = weights_module.save_weights

    def save_and_get_signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the trainer before the write goes on
        real_save(*args, **kwargs)

    monkeypatch.setattr(weights_module, "save_weights", save_and_get_signalled)
    code, out, err = call(capsys, "train", HEART, *TINY, "--run-dir", tmp_path / "run")
    assert code == 0, err
    assert "got SIGTERM; finishing the run first" in err
    assert "saving a checkpoint" not in err
    assert "Run complete at step 5" in out and (tmp_path / "run" / "model.safetensors").is_file()


def test_a_second_signal_during_the_first_ones_message_is_not_said_again(monkeypatch):
    """Under Slurm a worker can get USR1 twice at once (from srun, to the process group, and from the
    launcher, which forwards it): the second handler runs while the first one is still printing."""
    class SignalledWhileWritten(io.StringIO):
        def write(self, text: str) -> int:
            if not self.getvalue():  # a signal arrives in the middle of the first message
                os.kill(os.getpid(), signal.SIGUSR1)
            return super().write(text)

    stderr = SignalledWhileWritten()
    monkeypatch.setattr(sys, "stderr", stderr)
    stops = StopSignals(Processes(rank=0, world_size=1, device=torch.device("cpu")))
    with stops.caught():
        os.kill(os.getpid(), signal.SIGUSR1)
    assert stops.received == signal.SIGUSR1
    assert stderr.getvalue().count("got SIGUSR1") == 1, stderr.getvalue()


def _two_processes(rank: int, others_request: float = 0.0) -> Processes:
    """Process `rank` of two, whose all-reduce (max) meets the other process's request (the agreement's first
    value; the other's other values are 0)."""

    def reduce(tensor: torch.Tensor, _op: str) -> torch.Tensor:
        other = torch.zeros_like(tensor)
        other[0] = others_request
        return torch.maximum(tensor, other)

    return Processes(rank=rank, world_size=2, device=torch.device("cpu"), _reduce=reduce)


def test_only_the_main_process_says_why_the_run_stops(capsys):
    """A worker that is not the main process stops silently; the main process says it for it when they agree."""
    worker = StopSignals(_two_processes(rank=1))
    with worker.caught():
        os.kill(os.getpid(), signal.SIGTERM)
    assert worker.received == signal.SIGTERM and worker.stop_at(1)
    assert capsys.readouterr().err == ""

    main = StopSignals(_two_processes(rank=0, others_request=signal.SIGTERM))
    with main.caught():
        assert main.stop_at(1)
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher's relay reaches it too, later: said once
    assert capsys.readouterr().err == "trainwright: another process got SIGTERM; saving a checkpoint after this step\n"


def test_sighup_is_a_stop_signal(capsys):
    stops = StopSignals(Processes.single())
    with stops.caught():
        os.kill(os.getpid(), signal.SIGHUP)
    assert stops.stop_at(1)
    assert capsys.readouterr().err == "trainwright: got SIGHUP; saving a checkpoint after this step\n"


def test_a_worker_whose_launcher_is_gone_stops(capsys, monkeypatch):
    """Under torchrun the launcher is the worker's parent; a process whose parent is not the launcher it
    started under (here: a pid that is not this process's parent) requests a stop within WATCH_SECONDS."""
    import trainwright.run.stopping as stopping

    monkeypatch.setattr(stopping, "launcher_pid", lambda: os.getppid() + 1)
    monkeypatch.setattr(stopping, "WATCH_SECONDS", 0.01)
    monkeypatch.setattr(stopping, "_watch", None)  # a watch of that launcher
    stops = StopSignals(Processes.single())
    with stops.caught():
        deadline = time.monotonic() + 10
        while not stops.received and time.monotonic() < deadline:
            time.sleep(0.01)
    assert stops.received == stopping.LAUNCHER_GONE and stops.stop_at(1)
    gone = os.getppid() + 1
    assert (
        capsys.readouterr().err
        == f"trainwright: the launcher (pid {gone}) is gone; saving a checkpoint after this step\n"
    )


def test_without_a_launcher_the_parent_is_not_watched(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    from trainwright.distributed.launcher import launcher_pid

    assert launcher_pid() is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert launcher_pid() == os.getppid()  # this process's parent when trainwright was imported

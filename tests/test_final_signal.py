"""A stop signal that arrives while a finished run writes its final files lets it finish and says so; a second
signal while the first one's message is written is not said again."""

from __future__ import annotations

import io
import os
import signal
import sys

import pytest
import torch

from reliability_helpers import HEART, TINY, call
from trainwright.processes import Processes
from trainwright.stopping import StopSignals


pytestmark = pytest.mark.usefixtures("keep_signal_handlers")


def test_sigterm_during_the_final_write_finishes_the_run_and_says_so(capsys, tmp_path, monkeypatch):
    import trainwright.trainer as trainer_module

    real_save = trainer_module.save_weights

    def save_and_get_signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the trainer before the write goes on
        real_save(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "save_weights", save_and_get_signalled)
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

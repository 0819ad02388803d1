"""A stop signal that arrives while a finished run writes its final files lets it finish and says so."""

from __future__ import annotations

import os
import signal

import pytest

from reliability_helpers import HEART, TINY, call


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

"""A NaN run never ends as 'Run complete': a non-finite loss stops training with exit code 3 and keeps
the last good checkpoint; nothing non-finite reaches metrics.jsonl."""

from __future__ import annotations

import math

import torch
from safetensors.torch import load_file

from conftest import strict_json
from reliability_helpers import HOUSE, call
from trainwright.checkpoint.format import verify
from trainwright.errors import EXIT_NONFINITE

# An absurd learning rate: the loss is finite at step 1 and not long after.
DIVERGING = ["logging.wandb=false", "optimizer.lr=1e10", "checkpoint.every_steps=1", "checkpoint.every_epochs=null",
             "trainer.log_every_steps=1"]


def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_keeps_its_last_good_checkpoint(capsys, tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = call(capsys, "train", HOUSE, *DIVERGING, "--run-dir", run_dir)
    assert code == EXIT_NONFINITE, err
    assert err.count("trainwright: error:") == 1 and "Traceback" not in err
    assert "training loss became nan" in err or "training loss became inf" in err, err
    assert "Run complete" not in out
    assert not (run_dir / "summary.json").exists() and not (run_dir / "model.safetensors").exists()

    folders = sorted((run_dir / "checkpoints").glob("step_*"))
    assert folders, "no good checkpoint was kept"
    assert str(folders[-1]) in err  # the message names it
    assert verify(folders[-1]) is None
    assert all(torch.isfinite(t).all() for t in load_file(folders[-1] / "model.safetensors").values())
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = strict_json(line)
        assert all(math.isfinite(v) for v in record.values()), record

    code, out, err = call(capsys, "train", HOUSE, *DIVERGING, "--run-dir", run_dir)  # the same command again
    assert code == EXIT_NONFINITE and "Run complete" not in out


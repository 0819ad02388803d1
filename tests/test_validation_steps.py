"""trainer.eval_every_steps: validation after every N-th optimizer step of the run; a run SIGKILLed between
two of them validates at the same steps after its resume, and ends with bitwise the same weights."""

from __future__ import annotations

import textwrap
from pathlib import Path

from safetensors.torch import load_file

from conftest import (
    RECIPES,
    assert_ok,
    cli_env_with_path,
    describe,
    metrics_by_step,
    newest_valid_checkpoint,
    run_cli,
    workflow,
)

MODULE = "tw_test_kill"
SOURCE = '''
import os
import signal
from pathlib import Path

from trainwright import Callback


class KillAt(Callback):
    """SIGKILLs its own process after optimizer step `step`, once: while `marker` does not exist yet."""

    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, Path(marker)

    def on_step_end(self, run):
        if run.step == self.step and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
'''

# heart, 1000 points: 12 steps per epoch, 2 epochs; validation every 5 steps (epoch ends: every 2nd epoch, so
# at the run's end), a checkpoint every 4 steps; killed after step 14, between the validations at 10 and 15.
KILLED_AT, VALIDATED = 14, [5, 10, 15, 20, 24]


def _overrides(marker: Path) -> list[str]:
    return ["data.num_points=1000", "trainer.epochs=2", "trainer.eval_every_epochs=2", "trainer.eval_every_steps=5",
            "checkpoint.every_steps=4", "checkpoint.async=false", "logging.wandb=false",
            f"callbacks=[{{name: {MODULE}:KillAt, step: {KILLED_AT}, marker: {marker}}}]"]


@workflow
def killed_and_resumed(folder: Path) -> dict:
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    env = cli_env_with_path(folder)
    done = folder / "already-killed"
    done.touch()
    reference = run_cli("train", RECIPES / "heart.yaml", *_overrides(done), "--run-dir", folder / "reference", env=env)
    run_dir, marker = folder / "run", folder / "marker"
    killed = run_cli("train", RECIPES / "heart.yaml", *_overrides(marker), "--run-dir", run_dir, env=env)
    resumable = newest_valid_checkpoint(run_dir)
    resumed = run_cli("train", RECIPES / "heart.yaml", *_overrides(marker), "--run-dir", run_dir, env=env)
    return {"reference": reference, "killed": killed, "resumed": resumed, "resumable": resumable,
            "dirs": (folder / "reference", run_dir)}


def _validations(run_dir: Path) -> dict[int, dict]:
    return {step: {k: v for k, v in values.items() if k.startswith("val/")}
            for step, values in metrics_by_step(run_dir).items() if "val/loss" in values}


def test_validation_every_n_steps(killed_and_resumed):
    reference = assert_ok(killed_and_resumed["reference"])
    assert sorted(_validations(killed_and_resumed["dirs"][0])) == VALIDATED, describe(reference)


def test_a_run_killed_between_validations_validates_at_the_same_steps_after_its_resume(killed_and_resumed):
    killed = killed_and_resumed["killed"]
    assert killed.returncode == -9, describe(killed)  # SIGKILLed after step 14
    resumable = killed_and_resumed["resumable"]
    assert resumable == 12
    resumed = assert_ok(killed_and_resumed["resumed"])
    assert f"Resuming from step {resumable} " in resumed.stdout, describe(resumed)
    assert "damaged" not in resumed.stdout + resumed.stderr
    reference_dir, run_dir = killed_and_resumed["dirs"]
    assert _validations(run_dir) == _validations(reference_dir)  # the same steps, the same values, each once
    assert sorted(_validations(run_dir)) == VALIDATED
    reference_weights, weights = (
        load_file(reference_dir / "model.safetensors"),
        load_file(run_dir / "model.safetensors"),
    )
    assert reference_weights.keys() == weights.keys()
    assert all(reference_weights[name].equal(weights[name]) for name in weights)  # bitwise

"""`python tests/kill_at_step.py STEP ARGS...`: `trainwright ARGS...`, SIGKILLed (every process of the launch,
the launcher too) as soon as its checkpoint of optimizer step STEP is complete on disk: a kill at a chosen
step, not at a moment. Also a script for `accelerate launch`. Used through tests/resuming.py.

For runs that trainwright starts itself (the folds of `cv`, the trials of `sweep`), the same kill is set by the
environment: `KILL_AT_STEP_VAR=STEP` and `KILL_IN_VAR=NAME` (the run dir's name), with tests/hooks on PYTHONPATH
(its sitecustomize.py calls `kill_in_run_named`); every process carrying the test's tag is killed, the driver too."""

from __future__ import annotations

import os
import signal
import sys

import psutil

from trainwright.cli import main
from trainwright.training import trainer

TAG_VAR = "TRAINWRIGHT_TEST_TAG"  # tests/processes.py: every process a test started carries it
KILL_AT_STEP_VAR = "TRAINWRIGHT_TEST_KILL_AT_STEP"
KILL_IN_VAR = "TRAINWRIGHT_TEST_KILL_IN"


def _kill_the_launch(parent_too: bool) -> None:
    """SIGKILL this process's parent when `parent_too` (the launcher of a multi-process run, the `cv` command that
    started a fold: it may be forked from the tests' fork server, whose children do not show the tag), every
    process the test started for this launch (the other ranks, DataLoader workers: they carry the test's tag),
    then this one."""
    me, tag = os.getpid(), os.environ.get(TAG_VAR)
    if parent_too:
        launcher = psutil.Process(me).parent()
        if launcher is not None:
            launcher.kill()
    if tag:
        for process in psutil.process_iter():
            try:
                if process.pid != me and process.environ().get(TAG_VAR) == tag:
                    process.kill()
            except (psutil.Error, OSError):
                continue
    os.kill(me, signal.SIGKILL)


def _kill_after_save(step: int, run_name: str | None = None) -> None:
    """Patch the trainer to kill the launch right after its checkpoint of `step` (in the run dir named
    `run_name`, when given: a run another trainwright command started, which is killed too)."""
    save = trainer.Trainer._save

    def save_then_die(self: trainer.Trainer) -> None:
        save(self)
        if self.state.step != step or (run_name is not None and self.run.path.name != run_name):
            return
        self._wait_for_checkpoint()
        self.processes.barrier()  # every process's files are written
        if self.processes.is_main:
            _kill_the_launch(parent_too=self.processes.world_size > 1 or run_name is not None)
        os.kill(os.getpid(), signal.SIGKILL)

    trainer.Trainer._save = save_then_die  # type: ignore[method-assign]


def kill_in_run_named() -> None:
    """From the environment (see above): kill the run whose dir is named `KILL_IN_VAR` after its checkpoint of
    step `KILL_AT_STEP_VAR`; no kill when the variables are unset."""
    if os.environ.get(KILL_AT_STEP_VAR) and os.environ.get(KILL_IN_VAR):
        _kill_after_save(int(os.environ[KILL_AT_STEP_VAR]), os.environ[KILL_IN_VAR])


if __name__ == "__main__":
    _kill_after_save(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))

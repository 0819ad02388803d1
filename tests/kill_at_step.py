"""`python tests/kill_at_step.py STEP ARGS...`: `trainwright ARGS...`, SIGKILLed (every process of the launch,
the launcher too) as soon as its checkpoint of optimizer step STEP is complete on disk: a kill at a chosen
step, not at a moment. Also a script for `accelerate launch`. Used through tests/resuming.py."""

from __future__ import annotations

import os
import signal
import sys

import psutil

from trainwright.cli import main
from trainwright.training import trainer

TAG_VAR = "TRAINWRIGHT_TEST_TAG"  # tests/processes.py: every process a test started carries it


def _kill_the_launch(world_size: int) -> None:
    """SIGKILL every process the test started for this launch (the launcher, the other ranks, DataLoader
    workers: all carry the test's tag), then this one. Without a tag: the launcher of a multi-process run."""
    me, tag = os.getpid(), os.environ.get(TAG_VAR)
    if tag:
        for process in psutil.process_iter():
            try:
                if process.pid != me and process.environ().get(TAG_VAR) == tag:
                    process.kill()
            except (psutil.Error, OSError):
                continue
    elif world_size > 1:
        launcher = psutil.Process(me).parent()
        if launcher is not None:
            launcher.kill()
    os.kill(me, signal.SIGKILL)


def _kill_after_save(step: int) -> None:
    save = trainer.Trainer._save

    def save_then_die(self: trainer.Trainer) -> None:
        save(self)
        if self.state.step != step:
            return
        self._wait_for_checkpoint()
        self.processes.barrier()  # every process's files are written
        if self.processes.is_main:
            _kill_the_launch(self.processes.world_size)
        os.kill(os.getpid(), signal.SIGKILL)

    trainer.Trainer._save = save_then_die  # type: ignore[method-assign]


if __name__ == "__main__":
    _kill_after_save(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))

"""`python tests/kill_at_step.py STEP ARGS...`: `trainwright ARGS...`, SIGKILLed (every process of the launch,
the launcher too) as soon as its checkpoint of optimizer step STEP is complete on disk: a kill at a chosen
step, not at a moment. Also a script for `accelerate launch`."""

from __future__ import annotations

import os
import signal
import sys

import psutil

from trainwright.cli import main
from trainwright.training import trainer


def _kill_after_save(step: int) -> None:
    save = trainer.Trainer._save

    def save_then_die(self: trainer.Trainer) -> None:
        save(self)
        if self.state.step != step:
            return
        self._wait_for_checkpoint()
        self.processes.barrier()  # every process's files are written
        if self.processes.world_size > 1 and self.processes.is_main:
            launcher = psutil.Process(os.getpid()).parent()
            if launcher is not None:
                launcher.kill()
        os.kill(os.getpid(), signal.SIGKILL)

    trainer.Trainer._save = save_then_die


if __name__ == "__main__":
    _kill_after_save(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))

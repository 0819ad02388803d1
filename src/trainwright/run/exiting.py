"""Leaving a process that joined a process group.

torch (2.14) keeps a gloo process group alive after `destroy_process_group()` once a model was wrapped
in DistributedDataParallel or sharded: its worker threads outlive the call and meet the interpreter's
shutdown, where gloo threads are known to abort a process (pytorch#179291). A completed 2-process FSDP
run did abort so once ("terminate called without an active exception", exit -6, after everything was
written). A process that closed a group therefore runs its exit handlers itself (W&B's service
teardown, logging) and leaves without the interpreter's shutdown. tests/test_exiting.py notices when
torch frees the group again.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn

_closed_a_group = False


def closed_a_group() -> None:
    """Called after the process group was destroyed (training.end_processes, launched.end_launched)."""
    global _closed_a_group
    _closed_a_group = True


def leave(code: int) -> NoReturn:
    """Exit with `code`: normally, or, after a process group, with every exit handler run and the
    output flushed but without the interpreter's shutdown."""
    if not _closed_a_group:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)

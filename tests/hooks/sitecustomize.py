"""Imported by every Python process started with tests/hooks on PYTHONPATH (Python's `sitecustomize`): sets the
kill of tests/kill_at_step.py from the environment, for runs a trainwright command starts itself (cv folds)."""

import os
import sys

if os.environ.get("TRAINWRIGHT_TEST_KILL_AT_STEP"):  # kill_at_step.KILL_AT_STEP_VAR (not imported unless set)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
    import kill_at_step

    kill_at_step.kill_in_run_named()

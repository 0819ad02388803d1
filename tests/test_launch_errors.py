"""Under `accelerate launch` with several processes, a user error is printed once by the main process,
and the launcher's failure report, the last thing it prints, names the message as its root cause."""

from __future__ import annotations

import sys

import processes
from conftest import REPO, cli_env, describe
from reliability_helpers import HEART, TINY

CPU_2PROC = REPO / "accelerate_configs" / "cpu_2proc.yaml"


def test_a_user_error_is_the_last_thing_an_accelerate_launch_shows(tmp_path):
    result = processes.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", CPU_2PROC, "-m", "trainwright",
         "train", HEART, *TINY, "trainer.epochs=0", "--run-dir", tmp_path / "run"], cli_env(), timeout=240)
    assert result.returncode != 0, describe(result)
    assert not (tmp_path / "run").exists()
    assert "ChildFailedError" in result.stderr, describe(result)  # the launcher's report, which cannot be avoided
    root_cause = result.stderr[result.stderr.rindex("Root Cause"):]
    message = root_cause[root_cause.index("traceback : ") + len("traceback : "):].rstrip().rstrip("=").rstrip()
    assert message.startswith("trainwright: error:") and message.endswith("(got 0)"), describe(result)
    assert "trainer.epochs" in message  # the report ends with the message itself
    printed = [line for line in result.stderr.splitlines() if line.startswith("trainwright: error:")]
    assert len(printed) == 1, describe(result)  # printed once (by the main process), then named in the report

"""The fork server (tests/fork_server.py) runs a command as a new Python process would: what the command sees
(its arguments, environment, working folder, stdin, signal dispositions, sys.path) and what the test sees (its
output, exit code, death by signal) are the same either way."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import processes
from conftest import cli_env

SCRIPT = '''
import json, os, signal, sys
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "var": os.environ.get("FORK_SERVER_TEST"),
                  "path0": sys.path[0], "sigint": str(signal.getsignal(signal.SIGINT)),
                  "stdin": sys.stdin.read(), "main": __name__, "torch_threads": __import__("torch").get_num_threads()}))
print("to stderr", file=sys.stderr)
how = sys.argv[1]
if how == "exit":
    sys.exit(3)
if how == "message":
    sys.exit("a message")
if how == "raise":
    raise ValueError("boom")
if how == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
if how == "interrupt":
    raise KeyboardInterrupt
'''


def both_ways(args: list[object], env: dict[str, str], cwd: Path) -> tuple:
    """`args` run from the fork server, then as a new process: (returncode, stdout, stderr) each."""
    results = []
    for no_server in ("0", "1"):
        os.environ[processes.NO_FORK_SERVER_VAR] = no_server
        try:
            result = processes.run(args, env, cwd=cwd)
        finally:
            del os.environ[processes.NO_FORK_SERVER_VAR]
        results.append((result.returncode, result.stdout, result.stderr))
    return tuple(results)


@pytest.mark.parametrize(("how", "returncode"), [("ok", 0), ("exit", 3), ("message", 1), ("raise", 1),
                                                 ("sigkill", -9), ("interrupt", -2)])
def test_a_script_runs_as_in_a_new_process(tmp_path, how, returncode):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    forked, new = both_ways([sys.executable, script, how], cli_env(FORK_SERVER_TEST="seen"), cwd=tmp_path)
    assert forked == new
    assert forked[0] == returncode
    assert f'"cwd": "{tmp_path}", "var": "seen", "path0": "{tmp_path}"' in forked[1]
    assert '"stdin": "", "main": "__main__", "torch_threads": 1' in forked[1]
    assert "to stderr" in forked[2]


def test_a_module_and_a_user_error_run_as_in_a_new_process(tmp_path):
    forked, new = both_ways([sys.executable, "-m", "trainwright", "check", "heart", "trainer.epocs=1"], cli_env(),
                            cwd=tmp_path)
    assert forked == new and forked[0] == 2 and "did you mean 'epochs'" in forked[2]


def test_a_command_with_other_start_up_variables_gets_a_server_of_its_own(tmp_path):
    args = [sys.executable, "-m", "trainwright", "--version"]
    first = processes._fork_server([str(a) for a in args], cli_env())
    other = processes._fork_server([str(a) for a in args], cli_env(PYTHONPATH=str(tmp_path)))
    assert first is not None and other is not None and first is not other
    assert processes._fork_server([str(a) for a in args], cli_env()) is first
    assert processes._fork_server(["bash", "-c", "true"], cli_env()) is None

"""The recipe's `callbacks` (a user's module on PYTHONPATH) and trainer.profile, on real heart runs: a
callback logs a metric every step (metrics.jsonl and the offline W&B run) and sees every hook; its counter
survives a SIGKILL and a resume (final weights bitwise equal to an uninterrupted run) and a resume on
another process count and from sharded checkpoints; it stops a run cleanly, also when only process 1 of
two asks; one that raises is one message with the checkpoints kept; a bad import path is one message. The
profiler writes a trace of the steps it was asked for, and nothing when it is off."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import textwrap
from pathlib import Path

import pytest

import processes
import resuming
from conftest import (
    REPO,
    assert_ok,
    assert_resumed,
    assert_user_error,
    checkpoint_dir,
    checkpoint_problem,
    checkpoint_steps,
    cli_env,
    metrics_by_step,
    newest_valid_checkpoint,
    no_credentials_env,
    read_jsonl,
    run_cli,
    wandb_history,
    wandb_records,
)
from reliability_helpers import HEART, user_error
from resuming import HEART_RUN, HEART_STEPS
from trainwright.checkpoint.format import MANIFEST, verify, write_manifest
from trainwright.distributed.processes import Processes
from trainwright.run.stopping import StopSignals

MODULE = "tw_test_callbacks"
SOURCE = '''
import json
from pathlib import Path

from trainwright import Callback


class Counter(Callback):
    """Counts the steps it saw (its state); logs the count every `every` steps; on process `stop_rank`,
    asks the run to stop once it counted `stop_at`."""

    def __init__(self, every: int = 1, stop_at: int = 0, stop_rank: int = 0):
        self.every, self.stop_at, self.stop_rank = every, stop_at, stop_rank
        self.count = 0

    def on_step_end(self, run):
        self.count += 1
        if run.step % self.every == 0:
            run.log({"callback/count": self.count, "callback/lr": run.lr})
        if self.stop_at and self.count >= self.stop_at and run.rank == self.stop_rank:
            run.request_stop(f"counted {self.count} steps on process {run.rank}")

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


class Recorder(Callback):
    """Appends every hook it sees to `out`/events-rank<R>.jsonl."""

    def __init__(self, out: Path):
        self.out = out

    def _write(self, run, **event):
        event.update(step=run.step, world_size=run.world_size, is_main=run.is_main)
        with open(self.out / f"events-rank{run.rank}.jsonl", "a") as file:
            file.write(json.dumps(event) + "\\n")

    def on_fit_start(self, run):
        self._write(run, hook="fit_start", epoch=run.epoch, total_steps=run.total_steps)

    def on_validation_end(self, run, metrics):
        self._write(run, hook="validation", metrics=dict(metrics), same=dict(run.val_metrics) == dict(metrics))

    def on_checkpoint_saved(self, run, folder):
        self._write(run, hook="checkpoint", folder=folder.name, complete=(folder / "manifest.json").is_file())

    def on_fit_end(self, run):
        self._write(run, hook="fit_end")


class GradNorm(Callback):
    """Logs the gradient norm of the step just taken (its gradients are still there)."""

    def on_step_end(self, run):
        norms = [p.grad.norm() ** 2 for p in run.model.parameters() if p.grad is not None]
        run.log({"callback/grad_norm": float(sum(norms)) ** 0.5 if norms else -1.0})


class Boom(Callback):
    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_step_end(self, run):
        if run.step == self.at_step:
            raise ValueError(f"boom at step {run.step}")


class Unsaveable(Callback):
    def state_dict(self):
        return {"when": object()}


class LogsAStep(Callback):
    def on_fit_start(self, run):
        run.log({"step": 3})


class NotACallback:
    pass
'''

# 320 training points / 64: 5 steps per epoch.
TINY = ["data.num_points=400", "logging.wandb=false"]


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("user_module")
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    return folder


@pytest.fixture
def on_path(module_dir, monkeypatch) -> Path:
    """The user's module importable in this process (for in-process CLI calls)."""
    monkeypatch.syspath_prepend(str(module_dir))
    return module_dir


def env_with(module_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(base if base is not None else cli_env())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(module_dir), os.environ.get("PYTHONPATH")]))
    return env


def callbacks(*items: str) -> str:
    return "callbacks=[" + ", ".join(items) + "]"


def counter(**arguments: object) -> str:
    return "{" + ", ".join([f'name: "{MODULE}:Counter"', *(f"{k}: {v}" for k, v in arguments.items())]) + "}"


def recorder(out: Path) -> str:
    return f'{{name: "{MODULE}:Recorder", out: "{out}"}}'


def events(out: Path, rank: int = 0) -> list[dict]:
    return read_jsonl(out / f"events-rank{rank}.jsonl")


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def saved_count(run_dir: Path, step: int) -> int:
    saved = json.loads((checkpoint_dir(run_dir, step) / "callbacks.json").read_text())
    assert [item["name"] for item in saved["callbacks"]][0] == f"{MODULE}:Counter"
    return saved["callbacks"][0]["state"]["count"]


def launch(config: str) -> list[object]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", REPO / "accelerate_configs" / config,
            "--main_process_port", processes.free_port()]


# --- logging and the hooks, with W&B offline -----------------------------------------------------------


@pytest.fixture(scope="module")
def logged(module_dir, tmp_path_factory) -> dict:
    """Heart for 2 epochs of 5 steps, a checkpoint every 4 steps, W&B offline (no credentials)."""
    folder = tmp_path_factory.mktemp("logged")
    out, run_dir = folder / "out", folder / "run"
    out.mkdir()
    env = env_with(module_dir, no_credentials_env(folder / "home"))
    result = run_cli("train", HEART, "data.num_points=400", "trainer.epochs=2", "checkpoint.every_steps=4",
                     "checkpoint.keep_last=5", "logging.wandb=true",
                     callbacks(counter(), recorder(out), f"{MODULE}:GradNorm"), "--run-dir", run_dir, env=env)
    assert_ok(result)
    wandb_files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(wandb_files) == 1, sorted(run_dir.rglob("*"))
    return {"run_dir": run_dir, "out": out, "records": wandb_records(wandb_files[0], env)}


def test_a_callback_logs_every_step_into_metrics_jsonl_and_wandb(logged):
    counted = {r["step"]: r for r in read_jsonl(logged["run_dir"] / "metrics.jsonl") if "callback/count" in r}
    assert {step: record["callback/count"] for step, record in counted.items()} == {step: step for step in range(1, 11)}
    assert counted[5]["epoch"] == 1 and counted[6]["epoch"] == 2  # as the run's own metrics count epochs
    assert all(record["callback/lr"] == 0.01 for record in counted.values())  # heart's optimizer.lr, no scheduler
    merged = metrics_by_step(logged["run_dir"])
    assert all(merged[step]["callback/grad_norm"] > 0 for step in range(1, 11))  # the step's gradients were there
    history = wandb_history(logged["records"])
    assert {step: history[step]["callback/count"] for step in range(1, 11)} == {step: step for step in range(1, 11)}


def test_every_hook_is_called_at_its_point(logged):
    seen = events(logged["out"])
    assert seen[0] == {"hook": "fit_start", "step": 0, "epoch": 0, "total_steps": 10, "world_size": 1, "is_main": True}
    validations = [e for e in seen if e["hook"] == "validation"]
    assert [e["step"] for e in validations] == [5, 10]
    assert all(e["same"] and "val/loss" in e["metrics"] for e in validations)
    saves = [e for e in seen if e["hook"] == "checkpoint"]
    assert [(e["step"], e["folder"], e["complete"]) for e in saves] == [
        (step, f"step_{step:08d}", True) for step in (4, 5, 8, 10)
    ]
    assert seen[-1]["hook"] == "fit_end" and seen[-1]["step"] == 10


def test_every_checkpoint_holds_the_callbacks_state_in_its_manifest(logged):
    run_dir = logged["run_dir"]
    assert checkpoint_steps(run_dir) == [4, 5, 8, 10]
    for step in (4, 5, 8, 10):
        assert checkpoint_problem(checkpoint_dir(run_dir, step)) is None  # callbacks.json listed with its sha256
        assert saved_count(run_dir, step) == step
    merged = metrics_by_step(run_dir)  # handed to a callback written, so each save's own write time is known
    assert all(merged[step]["checkpoint/write_seconds"] > 0 for step in (4, 5, 8, 10)), merged
    assert not (run_dir / "profile").exists()  # trainer.profile is off: nothing written


def test_a_damaged_callbacks_json_makes_the_checkpoint_damaged(logged, tmp_path):
    folder = tmp_path / "step_00000010"
    shutil.copytree(checkpoint_dir(logged["run_dir"], 10), folder)
    assert verify(folder) is None
    (folder / "callbacks.json").unlink()
    (folder / "callbacks.json").write_text(json.dumps({"callbacks": [{"name": 3, "state": {}}]}))
    (folder / MANIFEST).unlink()
    write_manifest(folder, 10)
    assert verify(folder) == "callbacks.json is damaged (callbacks.0.name: Input should be a valid string)"


# --- state across a kill and a resume ----------------------------------------------------------------

def test_the_counter_survives_a_sigkill_and_the_resumed_run_is_bitwise_equal(module_dir, reference_runs, tmp_path):
    """Killed right after its step-8 checkpoint and run again: the counter goes on from 8, and the weights are
    those of the shared heart run without the callback (a callback that only logs changes no training)."""
    run_dir = tmp_path / "run"
    args = [*HEART_RUN, callbacks(counter()), "--run-dir", run_dir]
    resuming.kill_at(8, args, run_dir, env=env_with(module_dir))
    assert saved_count(run_dir, 8) == 8
    resuming.resume(8, args, env=env_with(module_dir))
    counts = {r["step"]: r["callback/count"] for r in read_jsonl(run_dir / "metrics.jsonl") if "callback/count" in r}
    assert counts == {step: step for step in range(1, HEART_STEPS + 1)}  # restored, not counted from 0 again
    assert saved_count(run_dir, HEART_STEPS) == HEART_STEPS
    resuming.assert_same_weights(run_dir, reference_runs(HEART_RUN))


def test_the_state_resumes_from_sharded_checkpoints_on_another_process_count(module_dir, tmp_path):
    """Two fsdp processes save sharded checkpoints (callbacks.json: the main process's state); one process
    resumes from them, and every process of a launch gets the state. Each process writes its own trace of
    the profiled steps, and the resumed run, past them, profiles nothing."""
    run_dir, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    args = ["-m", "trainwright", "train", HEART, *TINY, "trainer.epochs=2", callbacks(counter(), recorder(out)),
            "trainer.profile.start_step=2", "trainer.profile.steps=2", "--run-dir", run_dir]
    two = processes.run([*launch("fsdp_cpu_2proc.yaml"), *args, "trainer.max_steps=4"], env_with(module_dir))
    assert_ok(two)
    assert "world_size=2 device=cpu precision=no strategy=fsdp" in two.stdout
    traces = sorted((run_dir / "profile").iterdir())
    assert [trace.name for trace in traces] == ["rank0.2.pt.trace.json", "rank1.2.pt.trace.json"]
    assert all(step_marks(trace) == {"ProfilerStep#2", "ProfilerStep#3"} for trace in traces)
    assert two.stdout.count("trainer.profile: optimizer steps 2-3") == 1  # the main process prints
    assert (checkpoint_dir(run_dir, 4) / "model").is_dir() and saved_count(run_dir, 4) == 4  # sharded
    one = processes.run([sys.executable, *args, "trainer.max_steps=7"], env_with(module_dir))
    assert_ok(one)
    assert_resumed(one.stdout + one.stderr, 4)
    assert "world_size=1" in one.stdout
    assert "trainer.profile" not in one.stdout and sorted((run_dir / "profile").iterdir()) == traces
    assert saved_count(run_dir, 7) == 7
    starts = [e for e in events(out) if e["hook"] == "fit_start"]
    assert [(e["step"], e["world_size"]) for e in starts] == [(0, 2), (4, 1)]
    assert [e["step"] for e in events(out, rank=1) if e["hook"] == "fit_end"] == [4]


# --- stopping ----------------------------------------------------------------------------------------


def test_a_callback_stops_the_run_cleanly_and_it_is_then_already_complete(module_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", HEART, *TINY, "trainer.epochs=3", callbacks(counter(stop_at=7)), "--run-dir", run_dir]
    result = run_cli(*args, env=env_with(module_dir))
    assert_ok(result)
    assert "Run stopped by callback Counter: counted 7 steps on process 0 (after step 7)" in result.stdout
    stopped = summary(run_dir)
    assert stopped["status"] == "completed" and stopped["step"] == 7 and "val/loss" in stopped
    assert stopped["stopped_by_callback"] == {"callback": "Counter", "reason": "counted 7 steps on process 0",
                                              "step": 7, "epoch": 2}  # step 7 of 5 per epoch
    assert newest_valid_checkpoint(run_dir) == 7 and (run_dir / "model.safetensors").is_file()
    trainer = json.loads((checkpoint_dir(run_dir, 7) / "trainer.json").read_text())
    assert (trainer["stopped_by_callback"], trainer["stop_reason"]) == ("Counter", "counted 7 steps on process 0")

    again = run_cli(*args, env=env_with(module_dir))
    assert_ok(again)
    assert "Run was already complete at step 7" in again.stdout and "Run stopped by callback Counter" in again.stdout
    assert summary(run_dir) == stopped


def test_a_stop_asked_on_process_1_only_is_taken_at_the_same_step_on_both(module_dir, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    # 16000 training points / 64 = 250 steps per epoch, 2 epochs: the processes agree long before the end.
    result = processes.run([*launch("cpu_2proc.yaml"), "-m", "trainwright", "train", HEART, "data.num_points=20000",
                            "trainer.epochs=2", "logging.wandb=false", "checkpoint.every_steps=1000",
                            callbacks(counter(stop_at=6, stop_rank=1), recorder(out)), "--run-dir", run_dir],
                           env_with(module_dir))
    assert_ok(result)
    assert "world_size=2 device=cpu" in result.stdout
    stopped = summary(run_dir)["stopped_by_callback"]
    assert (stopped["callback"], stopped["reason"]) == ("Counter", "counted 6 steps on process 1")  # the first request
    step = stopped["step"]
    assert 6 <= step < 500 and summary(run_dir)["step"] == step
    assert f"Run stopped by callback Counter: {stopped['reason']}" in result.stdout
    ends = [[e["step"] for e in events(out, rank) if e["hook"] == "fit_end"] for rank in (0, 1)]
    assert ends == [[step], [step]]
    assert [e["world_size"] for e in events(out, 1)][:1] == [2]
    assert newest_valid_checkpoint(run_dir) == step and saved_count(run_dir, step) == step  # rank 0's counter
    logged = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "callback/count" in r]
    assert logged == list(range(1, step + 1))  # the main process's values only, once per step


def test_a_stop_signal_wins_over_a_callback_s_request_and_the_first_request_counts():
    stops = StopSignals(Processes.single())
    stops.request_finish("Counter", "enough")
    stops.request_finish("Other", "later")
    assert stops.pending and not stops.stop_at(3) and stops.finished_by == ("Counter", "enough")
    both = StopSignals(Processes.single())
    both.request_finish("Counter", "enough")
    both._request(signal.SIGTERM, "got SIGTERM")
    assert both.stop_at(3) and both.finished_by is None


# --- failures ----------------------------------------------------------------------------------------


def test_a_callback_that_raises_is_one_message_and_the_checkpoints_are_kept(module_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("train", HEART, *TINY, "trainer.epochs=2", "checkpoint.every_steps=3", "checkpoint.keep_last=5",
                     callbacks(f'{{name: "{MODULE}:Boom", at_step: 7}}'), "--run-dir", run_dir,
                     env=env_with(module_dir))
    message = assert_user_error(
        result.returncode, result.stderr,
        f"callback Boom ({MODULE}:Boom) failed in on_step_end at step 7: ValueError: boom at step 7 (",
        f"{MODULE}.py:", "its newest checkpoint", "step_00000006, is kept",
    )
    assert message.count("\n") == 1, message
    assert checkpoint_steps(run_dir) == [3, 5, 6] and newest_valid_checkpoint(run_dir) == 6
    assert not (run_dir / "summary.json").exists()


def test_a_state_json_cannot_hold_is_one_message(capsys, on_path, tmp_path):
    user_error(capsys, "train", HEART, *TINY, callbacks(f"{MODULE}:Unsaveable"), "--run-dir", tmp_path / "run",
               fragments=(f"callback Unsaveable ({MODULE}:Unsaveable) failed in state_dict at step 5",
                          "its state is not JSON data (Object of type object is not JSON serializable)"))


def test_logging_under_a_record_s_own_key_is_one_message(capsys, on_path, tmp_path):
    user_error(capsys, "train", HEART, *TINY, callbacks(f"{MODULE}:LogsAStep"), "--run-dir", tmp_path / "run",
               fragments=(f"callback LogsAStep ({MODULE}:LogsAStep) failed in on_fit_start at step 0: ValueError: "
                          f"log() got ['step']: the record's own keys; use other names ({on_path / MODULE}.py:",))


@pytest.mark.parametrize(("entry", "fragments"), [
    (f"{MODULE}:Countr", ("callbacks[0].name: module 'tw_test_callbacks' has no 'Countr'", "did you mean 'Counter'?")),
    ("no_such_package.cb:Counter", ("callbacks[0].name: cannot import module 'no_such_package.cb'", "PYTHONPATH")),
    ("Counter", ("callbacks[0].name: 'Counter' is not an import path", "package.module:Class")),
    (f"{MODULE}:NotACallback",
     (f"callbacks[0].name: {MODULE}:NotACallback is not a subclass of trainwright.Callback",)),
    (counter(stop_att=3), ("callbacks[0].stop_att: unknown argument for callback", "did you mean 'stop_at'?")),
    (counter(every="often"), ("callbacks[0].every: Input should be a valid integer", "got 'often'")),
])
def test_a_bad_callback_is_one_message_at_check(capsys, on_path, entry, fragments):
    user_error(capsys, "check", HEART, callbacks(entry), fragments=fragments)


@pytest.mark.parametrize("command", ["check", "train"])
def test_a_callback_that_is_not_a_class_is_refused_before_it_is_called(capsys, tmp_path, command):
    """`os:system` takes the recipe's argument as a shell command: it must never be called."""
    made = tmp_path / "made"
    entry = f'{{name: "os:system", command: "touch {made}"}}'
    extra = [*TINY, "--run-dir", tmp_path / "run"] if command == "train" else []
    user_error(capsys, command, HEART, callbacks(entry), *extra,
               fragments=("callbacks[0].name: os:system is a builtin_function_or_method, not a class",
                          "a subclass of trainwright.Callback"))
    assert not made.exists()


# --- the profiler ------------------------------------------------------------------------------------


def step_marks(trace: Path) -> set[str]:
    events = json.loads(trace.read_text())["traceEvents"]
    return {e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")}


def test_the_profiler_records_the_steps_asked_for_once(tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", HEART, *TINY, "trainer.epochs=2", "trainer.profile.start_step=3", "trainer.profile.steps=2",
            "--run-dir", run_dir]
    result = assert_ok(run_cli(*args))
    trace = run_dir / "profile" / "rank0.3.pt.trace.json"
    assert sorted(p.name for p in (run_dir / "profile").iterdir()) == [trace.name]
    assert step_marks(trace) == {"ProfilerStep#3", "ProfilerStep#4"}
    assert "trainer.profile: optimizer steps 3-4" in result.stdout and "Self CPU" in result.stdout

    written = trace.stat().st_mtime_ns  # a resumed run past the window does not profile again
    longer = assert_ok(run_cli(*args[:-2], "trainer.epochs=3", "--run-dir", run_dir))
    assert_resumed(longer.stdout + longer.stderr, 10)
    assert "trainer.profile" not in longer.stdout
    assert trace.stat().st_mtime_ns == written


def test_a_profile_window_past_the_run_is_refused(capsys, tmp_path):
    user_error(capsys, "train", HEART, *TINY, "trainer.profile.start_step=16", "--run-dir", tmp_path / "run",
               fragments=("trainer.profile.start_step=16 is beyond the run's 15 optimizer steps",))


def test_a_misspelt_profile_key_gets_a_did_you_mean(capsys):
    user_error(capsys, "check", HEART, "trainer.profile.start_stepp=3",
               fragments=("trainer.profile.start_stepp: unknown key; did you mean 'start_step'?",))


def test_the_run_view_reads_the_context_at_each_access_and_refuses_assignment():
    from types import SimpleNamespace

    from trainwright.training.callbacks import RunView

    state = SimpleNamespace(step=3, epoch=1, batch_in_epoch=2, samples_seen=96, val_metrics={"val/loss": 0.5})
    context = SimpleNamespace(state=state, total_steps=20, steps_per_epoch=10, run_dir=Path("runs/x"),
                              processes=SimpleNamespace(rank=1, world_size=2, is_main=False))
    view = RunView(context, "Mine")
    read = (view.step, view.epoch, view.total_steps, view.rank, view.world_size, view.is_main)
    assert read == (3, 1, 20, 1, 2, False)
    state.step = 4
    assert view.step == 4 and dict(view.val_metrics) == {"val/loss": 0.5}
    for name, value in (("step", 9), ("run_dir", Path("elsewhere")), ("world_size", 1)):
        with pytest.raises(AttributeError, match=f"RunView.{name} is read-only"):
            setattr(view, name, value)
    assert view.step == 4 and view.run_dir == Path("runs/x") and view.world_size == 2
    assert RunView.step.__doc__ == "Optimizer steps done."  # on the class: the field, with its docstring

"""The run dir's own files: recognised by trainwright's marker only; damaged or missing files are one
message naming them (or written again from the checkpoints); eval/predict say which weights they use."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

import trainwright.run.stopping
from reliability_helpers import HEART, TINY, call, snapshot, train_ok, user_error

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")


@pytest.fixture
def finished(capsys, tmp_path) -> Path:
    """A tiny completed heart run (2 epochs, 10 steps)."""
    run_dir = tmp_path / "run"
    train_ok(capsys, HEART, *TINY, "trainer.epochs=2", "--run-dir", run_dir)
    return run_dir


# --- what is a run dir ------------------------------------------------------------------------------


def test_a_users_folder_holding_a_recipe_yaml_is_not_a_run_dir(capsys, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "recipe.yaml").write_text(HEART.read_text())  # the user's own recipe
    (folder / "notes.txt").write_text("keep\n")
    before = snapshot(folder)
    for flags in ([], ["--restart"]):
        user_error(capsys, "train", HEART, *TINY, "--run-dir", folder, *flags, fragments=("not a trainwright run dir",))
    for command in (["eval", folder], ["predict", folder], ["plot", folder]):
        user_error(capsys, *command, fragments=("not a trainwright run dir", ".trainwright"))
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_a_run_dir_carries_the_marker(finished):
    marker = json.loads((finished / ".trainwright").read_text())
    assert "trainwright_version" in marker


# --- damaged and missing run files --------------------------------------------------------------------


@pytest.mark.parametrize("command", [["eval"], ["predict", "-n", "2"]])
def test_a_truncated_model_file_is_one_message(capsys, finished, command):
    model = finished / "model.safetensors"
    model.write_bytes(model.read_bytes()[:300])
    user_error(capsys, command[0], finished, *command[1:], fragments=(str(model), "damaged"))


def test_a_model_file_of_another_model_is_one_message(capsys, finished, tmp_path):
    other = tmp_path / "other"
    train_ok(capsys, HEART, *TINY, "model.hidden=[4]", "--run-dir", other)
    (finished / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    user_error(capsys, "eval", finished, fragments=(str(finished / "model.safetensors"), "does not fit"))


@pytest.mark.parametrize("command", [["eval"], ["predict"], ["plot"]])
def test_a_corrupt_recipe_yaml_is_one_message_naming_it(capsys, finished, command):
    (finished / "recipe.yaml").write_text("name: heart\ndata: [unclosed\n")
    user_error(capsys, *command, finished, fragments=(str(finished / "recipe.yaml"),))


def test_train_rewrites_a_corrupt_recipe_yaml(capsys, finished):
    recipe = (finished / "recipe.yaml").read_text()
    (finished / "recipe.yaml").write_text("name: heart\ndata: [unclosed\n")
    out, err = train_ok(capsys, HEART, *TINY, "trainer.epochs=2", "--run-dir", finished)
    assert f"{finished / 'recipe.yaml'} is damaged" in err and "Run complete at step 10" in out
    assert (finished / "recipe.yaml").read_text() == recipe


def test_train_repairs_a_corrupt_summary_and_a_deleted_model_from_the_last_checkpoint(capsys, finished):
    weights = (finished / "model.safetensors").read_bytes()
    summary = json.loads((finished / "summary.json").read_text())
    (finished / "model.safetensors").unlink()
    user_error(capsys, "eval", finished, fragments=("model.safetensors is missing although the run completed",
                                                    "trainwright train"))
    out, err = train_ok(capsys, HEART, *TINY, "trainer.epochs=2", "--run-dir", finished)
    assert "model.safetensors is missing; writing it again" in err
    assert (finished / "model.safetensors").read_bytes() == weights
    assert json.loads((finished / "summary.json").read_text()) == summary

    (finished / "summary.json").write_text('{"status": "compl')
    out, err = train_ok(capsys, HEART, *TINY, "trainer.epochs=2", "--run-dir", finished)
    assert "summary.json is damaged" in err and "Run complete at step 10" in out
    assert json.loads((finished / "summary.json").read_text()) == summary


# --- metrics.jsonl ------------------------------------------------------------------------------------

def test_train_writes_a_truncated_model_again(capsys, finished):
    model = finished / "model.safetensors"
    weights = model.read_bytes()
    model.write_bytes(weights[:-40])
    out, err = train_ok(capsys, HEART, *TINY, "trainer.epochs=2", "--run-dir", finished)
    assert "model.safetensors is damaged; writing it again" in err and "Run complete at step 10" in out
    assert model.read_bytes() == weights


# --- which weights -----------------------------------------------------------------------------------


def test_eval_and_predict_say_which_step_the_weights_are_from(capsys, finished):
    for command in (["eval", finished], ["predict", finished, "-n", "1"]):
        code, _, err = call(capsys, *command)
        assert code == 0 and "weights of step 10" in err, err


def test_eval_after_an_extended_run_was_stopped_says_the_weights_are_older(capsys, finished, monkeypatch):
    original = trainwright.run.stopping.StopSignals.stop_at

    def stop_at_step_12(self, step):
        if step >= 12:
            self.received = signal.SIGTERM
        return original(self, step)

    monkeypatch.setattr(trainwright.run.stopping.StopSignals, "stop_at", stop_at_step_12)
    code, out, _ = call(capsys, "train", HEART, *TINY, "trainer.epochs=4", "checkpoint.every_steps=1",
                        "--run-dir", finished)
    assert code == 75 and "Stopped at step 12" in out
    code, _, err = call(capsys, "eval", finished)
    assert code == 0 and "weights of step 10" in err and "trained on to step 12" in err, err


def test_a_completed_run_asked_for_fewer_steps_says_so(capsys, finished):
    out, err = train_ok(capsys, HEART, *TINY, "trainer.epochs=1", "--run-dir", finished)
    assert "already complete at step 10" in out
    assert "already trained 10 steps, more than the 5 this recipe asks for" in err


def test_plot_of_a_file_says_it_is_a_file(capsys, tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    user_error(capsys, "plot", tmp_path / "summary.json", fragments=("is a file", "run dir"))

"""The CLI's own messages: one line for bad arguments, and any environment error nothing more specific
caught is still one message."""

from __future__ import annotations

import errno

import pytest

from reliability_helpers import HEART, TINY, call, user_error


def test_train_without_a_recipe_asks_for_the_recipe_only(capsys):
    with pytest.raises(SystemExit) as info:
        call(capsys, "train")
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "required: recipe" in err and "key.path=value" not in err.splitlines()[-1]


def test_predict_count_that_is_not_a_number(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        call(capsys, "predict", tmp_path, "-n", "abc")
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "expected a whole number" in err and "_positive_int" not in err


def test_an_unexpected_os_error_is_still_one_message(capsys, tmp_path, monkeypatch):
    import trainwright.run.directory

    def broken(path, text):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(trainwright.run.directory, "write_text_atomic", broken)
    user_error(capsys, "train", HEART, *TINY, "--run-dir", tmp_path / "run",
               fragments=("Input/output error", "recipe.yaml"))

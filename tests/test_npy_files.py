"""`.npy` files that are not rows of numbers are one message naming the file, for training data and for
`predict --input`; float64 (or float16) inputs are cast to float32, the models' dtype, and that is said
(issue 26, items 6 and 9)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from reliability_helpers import call, user_error
from test_data_targets import npy_recipe
from trainwright.cli import main

BAD = {
    "0-d": (lambda path: np.save(path, np.array(3.0)), "holds a single value (a 0-d array), not rows"),
    "strings": (lambda path: np.save(path, np.array(["a", "b"])), "holds <U1 values, not numbers"),
    "text": (lambda path: path.write_text("1,2,3\n4,5,6\n"),
             "is not a .npy file (it does not begin with NumPy's header)"),
}


@pytest.fixture(scope="module")
def float64_run(tmp_path_factory) -> tuple[Path, str]:
    """A run trained on float64 inputs (with what it printed)."""
    folder = tmp_path_factory.mktemp("float64")
    recipe = npy_recipe(folder, (np.arange(40) % 2).astype(np.float32), "binary")
    np.save(folder / "x.npy", np.load(folder / "x.npy").astype(np.float64))
    err = io.StringIO()  # capsys is per test: this module's one run is captured by hand
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", str(recipe), "--run-dir", str(folder / "run")])
    assert code == 0, err.getvalue()
    return folder, err.getvalue()


def test_float64_inputs_train_as_float32_and_it_is_said(float64_run):
    folder, err = float64_run
    assert f"data.inputs: {folder / 'x.npy'} holds float64; read into memory as float32" in err
    assert (folder / "run" / "model.safetensors").exists()


def test_predict_reads_float64_rows(capsys, float64_run):
    folder, _ = float64_run
    np.save(folder / "new.npy", np.zeros((3, 4), dtype=np.float64))
    code, out, err = call(capsys, "predict", folder / "run", "--input", folder / "new.npy")
    assert code == 0, err
    assert len([line for line in out.splitlines() if "Predicted" in line]) == 3


@pytest.mark.parametrize("case", BAD)
def test_predict_input_that_is_not_rows_of_numbers_is_named(capsys, float64_run, tmp_path, case):
    folder, _ = float64_run
    write, fragment = BAD[case]
    write(tmp_path / "new.npy")
    user_error(capsys, "predict", folder / "run", "--input", tmp_path / "new.npy",
               fragments=(f"--input: {tmp_path / 'new.npy'} {fragment}",))


@pytest.mark.parametrize("case", BAD)
def test_training_inputs_that_are_not_rows_of_numbers_are_named(capsys, tmp_path, case):
    recipe = npy_recipe(tmp_path, (np.arange(40) % 2).astype(np.float32), "binary")
    write, fragment = BAD[case]
    write(tmp_path / "x.npy")
    message = user_error(capsys, "train", recipe, "--run-dir", tmp_path / "run",
                         fragments=(f"data.inputs: {tmp_path / 'x.npy'} {fragment}",))
    assert "allow_pickle" not in message and "in_features" not in message

"""Predicting on new inputs (issue 10): CSV rows prepared with the statistics the run trained with,
image files of any size and mode, points; to stdout or streamed to a file; the Python API gives the
same; every bad input is one message and leaves no output file."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, cli_env, write_fashion_mnist
from reliability_helpers import HEART, HOUSE, call, read_only, user_error
from trainwright import load_run
from trainwright.cli import main
from trainwright.components import build_model
from trainwright.data.vision import read_idx
from trainwright.errors import EXIT_PREEMPTED
from trainwright.recipe import load_recipe

HOUSE_CSV = REPO / "examples" / "house_prices.csv"
FASHION_MLP = REPO / "recipes" / "fashion_mnist_mlp.yaml"


def _train(folder: Path, *argv: object) -> Path:
    run_dir = folder / "run"
    assert main(["train", *map(str, argv), "logging.wandb=false", "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="module")
def house_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("house"), HOUSE, f"data.path={HOUSE_CSV}", "trainer.epochs=3")


@pytest.fixture(scope="module")
def heart_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("heart"), HEART, "data.num_points=2000", "trainer.epochs=2")


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A FashionMNIST MLP run on synthetic IDX files, and the test images it evaluates on (file order)."""
    folder = tmp_path_factory.mktemp("fashion")
    write_fashion_mnist(folder / "data")
    run_dir = _train(folder, FASHION_MLP, f"data.root={folder / 'data'}", "trainer.epochs=1", "optimizer.lr=0.2")
    return run_dir, read_idx(folder / "data" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte")


def _predicted(line: str) -> str:
    return line.split("Predicted: ", 1)[1].split(", Actual:")[0]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


# --- tabular -----------------------------------------------------------------------------------------


def test_new_houses_get_prices_from_the_statistics_the_run_trained_with(capsys, house_run, tmp_path):
    new = tmp_path / "new.csv"
    new.write_text("NumRooms,Alley\n3,Pave\n,Pave\n4,Cobblestone\n")  # a missing NumRooms, an unseen Alley
    code, out, err = call(capsys, "predict", house_run, "--input", new)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3 and lines[1].startswith("NumRooms=NA, Alley=Pave Predicted: ")
    assert err.count("Cobblestone") == 1 and "never seen in training" in err and "Pave" not in err

    # The same prices by hand: the training rows' statistics (read with pandas from the shipped CSV and the
    # run's own train/val split) applied to the three rows, through the saved weights.
    stats = json.loads((house_run / "data.json").read_text())["preprocessing"]
    shipped = pd.read_csv(HOUSE_CSV)
    val_rows = torch.randperm(len(shipped), generator=torch.Generator().manual_seed(0))[: round(len(shipped) * 0.2)]
    train = shipped.drop(index=val_rows.numpy())
    rooms_mean = train["NumRooms"].mean()
    filled = train["NumRooms"].fillna(rooms_mean)
    assert stats["fill"]["NumRooms"] == pytest.approx(rooms_mean)
    categories = sorted(train["Alley"].dropna().unique())
    features = []
    for rooms, alley in [(3.0, "Pave"), (rooms_mean, "Pave"), (4.0, None)]:
        one_hot = [float(alley == name) for name in categories] + [float(alley is None)]
        features.append([(rooms - filled.mean()) / filled.std(), *one_hot])
    model = build_model(load_recipe(house_run / "recipe.yaml", []))
    model.load_state_dict(load_file(house_run / "model.safetensors"))
    with torch.no_grad():
        scaled = model(torch.tensor(features, dtype=torch.float32))[:, 0].double()
    prices = scaled * train["Price"].std() + train["Price"].mean()
    assert [float(_predicted(line)) for line in lines] == pytest.approx(prices.tolist(), abs=0.06)


def test_the_shipped_csv_without_its_target_gives_the_predictions_of_predict_n(capsys, house_run, tmp_path):
    no_price = tmp_path / "houses.csv"
    pd.read_csv(HOUSE_CSV).drop(columns="Price").to_csv(no_price, index=False)
    code, out_n, err = call(capsys, "predict", house_run, "-n", "1000")  # every validation row, with Actual
    assert code == 0, err
    code, out_all, err = call(capsys, "predict", house_run, "--input", no_price, "-n", "1000")
    assert code == 0, err
    assert len(out_all.splitlines()) == len(pd.read_csv(HOUSE_CSV)) and "Actual" not in out_all
    validation = [line.split(", Actual:")[0] for line in out_n.splitlines()]
    assert len(validation) == 40 and set(validation) <= set(out_all.splitlines())


def test_the_target_column_when_present_is_shown_and_written_as_actual(capsys, house_run, tmp_path):
    out = tmp_path / "prices.jsonl"
    code, _, err = call(capsys, "predict", house_run, "--input", HOUSE_CSV, "--output", out)
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    shipped = pd.read_csv(HOUSE_CSV)
    assert [row["id"] for row in rows] == [str(i) for i in range(len(shipped))]
    assert [row["actual"] for row in rows] == shipped["Price"].astype(float).tolist()
    assert all(isinstance(row["prediction"], float) for row in rows)


# --- images ------------------------------------------------------------------------------------------


def test_a_png_of_a_test_image_and_a_bigger_rgb_copy_get_the_label_predict_n_gives(capsys, fashion_run, tmp_path):
    from PIL import Image

    run_dir, images = fashion_run
    item = 3
    png, big = tmp_path / "item.png", tmp_path / "item_56_rgb.jpg.png"
    Image.fromarray(images[item]).save(png)
    Image.fromarray(images[item]).resize((56, 56), Image.Resampling.NEAREST).convert("RGB").save(big)
    code, out, err = call(capsys, "predict", run_dir, "-n", str(item + 1))
    assert code == 0, err
    expected = _predicted(out.splitlines()[item])
    for path in (png, big):
        code, out, err = call(capsys, "predict", run_dir, "--input", path)
        assert code == 0, err
        assert out.splitlines() == [f"{path.name} Predicted: {expected}"]

    run = load_run(run_dir)
    reference = run.predict(torch.from_numpy(images[item : item + 1].copy()).unsqueeze(1).float() / 255)
    for source in (png, big, Image.open(big)):
        assert torch.equal(run.predict(source).outputs, reference.outputs)  # the same pixels, exactly


def test_an_idx_file_and_a_folder_of_images_are_read_whole(capsys, fashion_run, tmp_path):
    from PIL import Image

    run_dir, images = fashion_run
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(images[i]).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not a picture\n")
    out = tmp_path / "labels.csv"
    code, _, err = call(capsys, "predict", run_dir, "--input", folder, "--output", out)
    assert code == 0, err
    from_folder = _rows(out)
    assert [row["id"] for row in from_folder] == ["0.png", "1.png", "2.png"]
    idx = run_dir.parent / "data" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"
    code, _, err = call(capsys, "predict", run_dir, "--input", idx, "--output", tmp_path / "all.csv")
    assert code == 0, err
    from_idx = _rows(tmp_path / "all.csv")
    assert len(from_idx) == len(images) and from_idx[0]["id"] == "t10k-images-idx3-ubyte[0]"
    assert [row["prediction"] for row in from_idx[:3]] == [row["prediction"] for row in from_folder]
    probabilities = [float(from_idx[0][key]) for key in from_idx[0] if key.startswith("p_")]
    assert len(probabilities) == 10 and sum(probabilities) == pytest.approx(1.0, abs=1e-5)


# --- points, streaming and the Python API -----------------------------------------------------------


def _traced_peak(capsys, *argv: object) -> int:
    """The peak of the memory Python and NumPy/pandas allocate while `trainwright ARGV` runs (tracemalloc:
    unlike the process's peak RSS, not hidden under what importing torch maps)."""
    tracemalloc.start()
    try:
        code, _, err = call(capsys, *argv)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, err
    return peak


def test_a_large_points_csv_streams_to_the_output_in_bounded_memory(capsys, heart_run, tmp_path):
    peaks = {}
    for rows in (1_000, 20_000, 200_000):  # the first one warms up (imports, caches)
        points = tmp_path / f"points_{rows}.csv"
        frame = pd.DataFrame(np.random.default_rng(rows).uniform(-2, 2, size=(rows, 2)), columns=["x", "y"])
        frame.to_csv(points, index=False)
        out = tmp_path / f"out_{rows}.csv"
        peaks[rows] = _traced_peak(
            capsys, "predict", heart_run, "--input", points, "--output", out, "--batch-size", "4096"
        )
        written = pd.read_csv(out)
        assert len(written) == rows and written["id"].tolist() == list(range(rows))
    # Ten times the rows, the same peak: read, predicted and written a batch at a time (holding the
    # 200,000 rows would take more than 10 MB: their floats alone as a DataFrame take 3.2 MB).
    assert peaks[200_000] - peaks[20_000] < 1024 * 1024, peaks


def test_load_run_predict_matches_the_cli(capsys, heart_run, tmp_path):
    points = pd.DataFrame({"x": [0.0, 1.5, -0.3, 0.1], "y": [0.0, 1.5, 0.9, -0.5]})
    points.to_csv(tmp_path / "points.csv", index=False)
    code, _, err = call(
        capsys, "predict", heart_run, "--input", tmp_path / "points.csv", "--output", tmp_path / "p.csv"
    )
    assert code == 0, err
    cli = _rows(tmp_path / "p.csv")
    predictions = load_run(heart_run).predict(points)
    assert predictions.labels == [row["prediction"] for row in cli]
    assert predictions.probabilities[:, 1].tolist() == [float(row["p_inside"]) for row in cli]
    assert load_run(heart_run).evaluate()["val/accuracy"] == json.loads((heart_run / "summary.json").read_text())[
        "val/accuracy"]


# --- bad input ------------------------------------------------------------------------------------------


BAD_HOUSES = {
    "missing column": ("Rooms,Alley\n3,Pave\n", ("column 'NumRooms' is missing", "did you mean 'Rooms'")),
    "not a number": ("NumRooms,Alley\n3,Pave\nthree,Pave\n", ("'NumRooms'", "line 3", "'three'")),
    "empty file": ("", ("is empty",)),
    "header only": ("NumRooms,Alley\n", ("no data rows",)),
}


@pytest.mark.parametrize("case", BAD_HOUSES)
def test_a_bad_csv_is_one_message_and_no_output(capsys, house_run, tmp_path, case):
    text, fragments = BAD_HOUSES[case]
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    user_error(capsys, "predict", house_run, "--input", bad, "--output", tmp_path / "out.csv",
               fragments=(str(bad), *fragments))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_bad_image_inputs_are_one_message_and_no_output(capsys, fashion_run, tmp_path):
    run_dir, _ = fashion_run
    fake = tmp_path / "photo.png"
    fake.write_text("not a picture\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here\n")
    for source, fragments in ((fake, ("is not an image",)), (empty, ("holds no images",)),
                              (tmp_path / "nothing.png", ("does not exist",))):
        user_error(capsys, "predict", run_dir, "--input", source, "--output", tmp_path / "out.csv",
                   fragments=(str(source), *fragments))
    assert not (tmp_path / "out.csv").exists()


def test_points_without_their_columns_and_outputs_that_exist_are_refused(capsys, heart_run, tmp_path):
    (tmp_path / "x_only.csv").write_text("x\n0.5\n")
    user_error(capsys, "predict", heart_run, "--input", tmp_path / "x_only.csv", fragments=("column 'y' is missing",))
    (tmp_path / "points.csv").write_text("x,y\n0.5,0.5\n")
    kept = tmp_path / "mine.csv"
    kept.write_text("precious\n")
    user_error(capsys, "predict", heart_run, "--input", tmp_path / "points.csv", "--output", kept,
               fragments=(str(kept), "exists"))
    assert kept.read_text() == "precious\n"
    user_error(capsys, "predict", heart_run, "--input", tmp_path / "points.csv", "--output", tmp_path / "p.txt",
               fragments=(".csv or .jsonl",))


def test_an_unfinished_run_says_so_and_predicts_from_its_newest_checkpoint(capsys, heart_run, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(heart_run, unfinished)
    (unfinished / "model.safetensors").unlink()
    (unfinished / "summary.json").unlink()
    (tmp_path / "points.csv").write_text("x,y\n0.0,0.0\n")
    user_error(capsys, "predict", unfinished, "--input", tmp_path / "points.csv",
               fragments=("has not finished training", "--checkpoint latest", "step 50"))
    code, out, err = call(capsys, "predict", unfinished, "--input", tmp_path / "points.csv", "--checkpoint", "latest")
    assert code == 0 and "checkpoint step 50" in err, err
    code, expected, _ = call(capsys, "predict", heart_run, "--input", tmp_path / "points.csv")
    assert out == expected  # the last checkpoint holds the final weights


# --- where the output goes, and a stop while it is written (issue 19) ----------------------------------------


def test_an_output_in_a_read_only_folder_is_one_message_naming_it(capsys, heart_run, tmp_path):
    (tmp_path / "points.csv").write_text("x,y\n0.5,0.5\n")
    folder = tmp_path / "out"
    folder.mkdir()
    with read_only(folder):
        message = user_error(capsys, "predict", heart_run, "--input", tmp_path / "points.csv", "--output",
                             folder / "p.csv", fragments=(f"--output {folder / 'p.csv'}", "not writable"))
    assert ".tmp" not in message
    assert list(folder.iterdir()) == []


def test_sigterm_while_writing_the_output_removes_it_and_says_so(heart_run, tmp_path):
    points = tmp_path / "points.csv"
    pd.DataFrame(np.random.default_rng(0).uniform(-2, 2, size=(1_000_000, 2)), columns=["x", "y"]).to_csv(
        points, index=False)
    out = tmp_path / "out.csv"
    predict = subprocess.Popen(
        [sys.executable, "-m", "trainwright", "predict", str(heart_run), "--input", str(points), "--output", str(out),
         "--batch-size", "64"], cwd=REPO, env=cli_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL)
    def partial() -> bool:  # the temporary file beside out.csv has some rows
        return any(path.stat().st_size > 0 for path in tmp_path.glob(".out.csv.*.tmp"))

    try:
        deadline = time.monotonic() + 120
        while not partial():
            assert predict.poll() is None, predict.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        predict.send_signal(signal.SIGTERM)
        stdout, stderr = predict.communicate(timeout=120)
    finally:
        predict.kill()
    assert predict.returncode == EXIT_PREEMPTED, (predict.returncode, stderr)
    assert f"got SIGTERM; stopped predicting, nothing was written to {out}" in stderr
    assert "Traceback" not in stderr and "Wrote" not in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["points.csv"]

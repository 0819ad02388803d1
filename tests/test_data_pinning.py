"""A run never reads other data than it started with without saying so: paths pinned in its recipe, a
fingerprint and the preprocessing statistics in data.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from conftest import assert_resumed, house_frame
from reliability_helpers import HEART, HOUSE, HOUSE_SMALL, call, snapshot, train_ok, user_error


def eval_json(capsys, run_dir: Path, *extra: str) -> tuple[dict, str]:
    code, out, err = call(capsys, "eval", run_dir, *extra)
    assert code == 0, err
    return json.loads(out), err


def test_a_relative_data_path_is_pinned_and_eval_from_elsewhere_reads_the_same_file(capsys, tmp_path, house_csv,
                                                                                     monkeypatch):
    monkeypatch.chdir(house_csv.parent)
    run_dir = tmp_path / "run"
    train_ok(capsys, HOUSE, "data.path=houses.csv", *HOUSE_SMALL, "--run-dir", run_dir)
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert saved["data"]["path"] == str(house_csv)
    record = json.loads((run_dir / "data.json").read_text())
    assert record["files"]["data.path"]["sha256"] and record["files"]["data.path"]["path"] == str(house_csv)
    expected, _ = eval_json(capsys, run_dir)

    elsewhere = tmp_path / "elsewhere"  # another folder with another houses.csv
    elsewhere.mkdir()
    house_frame(150, seed=99).to_csv(elsewhere / "houses.csv", index=False)
    monkeypatch.chdir(elsewhere)
    metrics, _ = eval_json(capsys, run_dir)
    assert metrics == expected
    code, out, err = call(capsys, "predict", run_dir, "-n", "2")
    assert code == 0 and len(out.splitlines()) == 2, err


def test_resume_with_changed_data_is_refused_unless_allowed(capsys, tmp_path, house_csv):
    run_dir = tmp_path / "run"
    train_ok(capsys, HOUSE, f"data.path={house_csv}", *HOUSE_SMALL, "--run-dir", run_dir)
    house_frame(150, seed=5).to_csv(house_csv, index=False)  # same file, other rows
    before = snapshot(run_dir)
    message = user_error(capsys, "train", HOUSE, f"data.path={house_csv}", *HOUSE_SMALL, "trainer.epochs=6",
                         "--run-dir", run_dir, fragments=("data differ", str(house_csv), "--allow-data-change"))
    assert "train split" in message
    assert snapshot(run_dir) == before

    out, err = train_ok(capsys, HOUSE, f"data.path={house_csv}", *HOUSE_SMALL, "trainer.epochs=6", "--run-dir", run_dir,
                        "--allow-data-change")
    assert "data differ" in err
    assert_resumed(out + err)
    assert eval_json(capsys, run_dir)[0]  # data.json now records the data trained on last: no flag needed


def test_eval_and_predict_with_changed_data_are_refused_unless_allowed(capsys, tmp_path, house_csv):
    run_dir = tmp_path / "run"
    train_ok(capsys, HOUSE, f"data.path={house_csv}", *HOUSE_SMALL, "--run-dir", run_dir)
    frame = house_frame(150)
    frame.loc[3, "Price"] += 1.0  # one value changed
    frame.to_csv(house_csv, index=False)
    for command in (["eval", run_dir], ["predict", run_dir, "-n", "2"]):
        user_error(capsys, *command, fragments=("data differ", "data.path", "--allow-data-change"))
        code, out, err = call(capsys, *command, "--allow-data-change")
        assert code == 0 and "data differ" in err, err


def test_moved_but_identical_data_may_resume(capsys, tmp_path, house_csv, monkeypatch):
    """Where the data are may change; what they hold may not."""
    run_dir = tmp_path / "run"
    monkeypatch.chdir(house_csv.parent)
    train_ok(capsys, HOUSE, "data.path=houses.csv", *HOUSE_SMALL, "--run-dir", run_dir)
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(house_csv, moved / "houses.csv")
    monkeypatch.chdir(moved)
    out, err = train_ok(capsys, HOUSE, "data.path=houses.csv", *HOUSE_SMALL, "trainer.epochs=6", "--run-dir", run_dir)
    assert "data.path" in out and "Recipe changed since the checkpoint (allowed)" in out
    assert_resumed(out + err)


def test_generated_data_are_fingerprinted_too(capsys, tmp_path, monkeypatch):
    """Data made in memory by user code that changed between two commands: the tensors' sha256 differs."""
    module = tmp_path / "my_points.py"
    source = (
        "import torch\n"
        "from trainwright.data.bundle import DataBundle, Task, TensorSplit\n"
        "def points(n: int = 400):\n"
        "    x = torch.rand(n, 2, generator=torch.Generator().manual_seed(SEED)) * 4 - 2\n"
        "    y = (x[:, :1] > 0).float()\n"
        "    return DataBundle(train=TensorSplit(x[:320], y[:320]), val=TensorSplit(x[320:], y[320:]),\n"
        "                      task=Task('binary'))\n"
    )
    module.write_text(source.replace("SEED", "1"))
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "run"
    common = ["data.name=my_points:points", "data.num_points=null", "data.seed=null", "data.val_fraction=null",
              "logging.wandb=false"]
    train_ok(capsys, HEART, *common, "trainer.epochs=1", "--run-dir", run_dir)
    assert set(json.loads((run_dir / "data.json").read_text())["splits"]) == {"train", "val"}
    module.write_text(source.replace("SEED", "12345"))  # another length too, so no stale bytecode is used
    import importlib

    import my_points

    importlib.reload(my_points)
    user_error(capsys, "train", HEART, *common, "trainer.epochs=2", "--run-dir", run_dir,
               fragments=("data differ", "train split"))


def test_csv_statistics_are_recorded_in_the_run(capsys, tmp_path, house_csv):
    run_dir = tmp_path / "run"
    train_ok(capsys, HOUSE, f"data.path={house_csv}", *HOUSE_SMALL, "--run-dir", run_dir)
    stats = json.loads((run_dir / "data.json").read_text())["preprocessing"]
    assert set(stats) == {"numeric", "categorical", "fill", "standardize", "categories", "target"}
    assert stats["numeric"] == ["NumRooms"] and stats["categorical"] == ["Alley"]
    assert stats["categories"]["Alley"] == ["Grvl", "Pave"]
    assert stats["target"]["column"] == "Price" and stats["target"]["std"] > 0

"""eval and predict under a 3-process CPU launch (accelerate_configs/cpu_2proc.yaml with --num_processes 3):
each process scores or predicts its own contiguous slice, every item exactly once also where the split does
not divide by 3, the sums and counts are added up, and the main process alone prints or writes what one
process prints or writes (within float tolerance: the batches differ)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from conftest import REPO, TESTS, assert_ok, cli_env_with_tests
from processes import free_port, run
from reliability_helpers import HEART, call

pytestmark = pytest.mark.slow
VAL_ITEMS = 100  # 500 points, val_fraction 0.2: shares of 34, 33 and 33


def launched(*args: object, env: dict[str, str]) -> str:
    """`trainwright ARGS` on 3 CPU processes; its stdout."""
    result = assert_ok(run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                            REPO / "accelerate_configs" / "cpu_2proc.yaml", "--num_processes", "3",
                            "--main_process_port", str(free_port()), "-m", "trainwright", *args], env))
    return result.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("launched") / "run"
    result = assert_ok(run([sys.executable, "-m", "trainwright", "train", HEART, "data.num_points=500",
                            "trainer.epochs=1", "logging.wandb=false", "metrics=[accuracy, rank_probe:items]",
                            "--run-dir", run_dir], _env()))
    assert "Run complete" in result.stdout
    return run_dir


def _env(**changes: str) -> dict[str, str]:
    return cli_env_with_tests(**changes)


def test_eval_on_three_processes_prints_the_one_process_metrics_once(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    code, single, err = call(capsys, "eval", trained)
    assert code == 0, err
    probe = tmp_path / "probe"
    probe.mkdir()
    out = launched("eval", trained, env=_env(RANK_PROBE_DIR=str(probe)))
    assert out.count('"val/loss"') == 1, out  # printed by the main process alone
    expected, got = json.loads(single), json.loads(out)
    assert got.keys() == expected.keys() == {"val/loss", "val/accuracy", "val/items"}
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key
    shares = {path.name: [int(n) for n in path.read_text().split()] for path in sorted(probe.glob("rank*.txt"))}
    assert shares == {"rank0.txt": [34], "rank1.txt": [33], "rank2.txt": [33]}  # 3 processes, each item once


def test_predict_on_three_processes_writes_the_one_process_rows_once(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    points = tmp_path / "points.csv"
    points.write_text("x,y\n" + "".join(f"{i / 10},{-i / 7}\n" for i in range(11)))  # batches of 4, 4 and 3
    code, single, err = call(capsys, "predict", trained, "--input", points, "--output", tmp_path / "one.csv",
                             "--batch-size", "4")
    assert code == 0, err
    out = launched("predict", trained, "--input", points, "--output", tmp_path / "three.csv", "--batch-size", "4",
                   env=_env())
    assert out.count("Wrote 11 predictions") == 1, out
    one, three = (list(csv.DictReader((tmp_path / name).open())) for name in ("one.csv", "three.csv"))
    assert [row["id"] for row in three] == [row["id"] for row in one] == [str(i) for i in range(11)]
    for a, b in zip(one, three):
        assert a["prediction"] == b["prediction"]
        assert float(a["p_inside"]) == pytest.approx(float(b["p_inside"]), abs=1e-6)
    first = launched("predict", trained, "-n", "7", env=_env())
    code, expected, err = call(capsys, "predict", trained, "-n", "7")
    assert code == 0, err
    assert first == expected and len(first.splitlines()) == 7

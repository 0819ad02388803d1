"""CSV data: every statistic from the training rows only; values that are not finite numbers are
refused naming their column and line."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import house_frame
from reliability_helpers import HOUSE, HOUSE_SMALL, user_error


def test_csv_statistics_come_from_the_training_rows_only(tmp_path):
    from trainwright.data.tabular import csv

    path = tmp_path / "t.csv"
    rows = ["NumRooms,Alley,Price"] + [f"{r},Pave,{100 + r}" for r in range(1, 9)] + ["1000,Grvl,999999", ",Dirt,50"]
    path.write_text("\n".join(rows) + "\n")
    bundle = csv(str(path), target="Price", numeric=["NumRooms"], categorical=["Alley"], val_fraction=0.2, split_seed=0)
    stats = bundle.preprocessing
    train_prices = bundle.task.decode(bundle.train.targets[:, 0]).double().numpy()
    assert bundle.task.target_mean == pytest.approx(train_prices.mean(), rel=1e-6)
    assert bundle.task.target_std == pytest.approx(train_prices.std(ddof=1), rel=1e-5)
    assert stats["target"]["mean"] == bundle.task.target_mean
    # whatever the split, the fill value and categories are those of the training rows
    frame_rows = [row.split(",") for row in rows[1:]]
    train_prices_set = {round(p) for p in train_prices}
    train_rows = [r for r in frame_rows if int(r[2]) in train_prices_set]
    rooms = [float(r[0]) for r in train_rows if r[0]]
    assert stats["fill"]["NumRooms"] == pytest.approx(np.mean(rooms))
    assert stats["categories"]["Alley"] == sorted({r[1] for r in train_rows})
    assert stats["standardize"]["NumRooms"]["mean"] == pytest.approx(
        np.mean([float(r[0]) if r[0] else np.mean(rooms) for r in train_rows])
    )


@pytest.mark.parametrize(("column", "value"), [("Price", "inf"), ("Price", "1e400"), ("NumRooms", "-inf"),
                                               ("NumRooms", "1e39")])
def test_non_finite_csv_values_are_refused_naming_column_and_line(capsys, tmp_path, house_csv, column, value):
    frame = house_frame(30)
    frame[column] = frame[column].astype(object)
    frame.loc[4, column] = value
    frame.to_csv(house_csv, index=False)
    user_error(capsys, "train", HOUSE, f"data.path={house_csv}", *HOUSE_SMALL, "--run-dir", tmp_path / "run",
               fragments=(str(house_csv), f"'{column}'", "line 6", "not a finite number"))
    assert not (tmp_path / "run").exists()

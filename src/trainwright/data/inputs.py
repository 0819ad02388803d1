"""New inputs for a trained run (`trainwright predict --input`, `Run.predict`): each built-in data set
reads them the way it read its training data, with the statistics recorded in the run (data.json),
never recomputed from the new inputs.

A reader is registered with its data set (components.py, `inputs=`): a function
`(source, record, batch_size) -> Iterator[InputBatch]`, where `source` is a path or a pandas DataFrame
(the image reader also takes PIL images and lists of paths) and `record` is the run's data.json.
Large files are read `batch_size` rows at a time, so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from trainwright.data.input_batch import InputBatch
from trainwright.data.tabular import apply_statistics, describe_row, feature_columns, first_row, numbers
from trainwright.errors import UserError, did_you_mean
from trainwright.run.files import warn

INPUT_FIX = "fix the value or remove the row"


def csv_frames(source: Path | pd.DataFrame, batch_size: int) -> Iterator[pd.DataFrame]:
    """A CSV file (or a DataFrame) `batch_size` rows at a time; the rows keep their number (0 = first)."""
    if isinstance(source, pd.DataFrame):
        if source.empty:
            raise UserError("the DataFrame to predict on has no rows")
        frame = source.reset_index(drop=True)
        yield from (frame.iloc[start : start + batch_size] for start in range(0, len(frame), batch_size))
        return
    if source.suffix.lower() not in (".csv", ".txt"):
        raise UserError(f"--input {source}: expected a CSV file (.csv) for this run's data")
    rows = 0
    try:
        for frame in pd.read_csv(source, chunksize=batch_size):
            if len(frame):  # a file of a header alone gives one empty chunk
                rows += len(frame)
                yield frame
    except pd.errors.EmptyDataError:
        raise UserError(f"--input {source} is empty; expected a header row and data rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"--input {source}: cannot parse it as CSV: {str(exc).strip()}") from None
    if rows == 0:
        raise UserError(f"--input {source} has a header but no data rows")


def require_columns(frame: pd.DataFrame, needed: list[str], where: object) -> None:
    """Every column the run was trained on must be there (others are ignored)."""
    for column in needed:
        if column not in frame.columns:
            raise UserError(
                f"{where}: column '{column}' is missing{did_you_mean(column, frame.columns)}; the run was trained on "
                f"the columns {', '.join(needed)} (columns found: {', '.join(map(str, frame.columns))})"
            )


def _where(source: Path | pd.DataFrame) -> str:
    return "the DataFrame" if isinstance(source, pd.DataFrame) else str(source)


def _row_ids(frame: pd.DataFrame) -> list[str]:
    return [str(row) for row in frame.index]


def _points(
    source: Path | pd.DataFrame, features: list[str], target: str | None, batch_size: int
) -> Iterator[InputBatch]:
    where, first = _where(source), True
    for frame in csv_frames(source, batch_size):
        if first:
            require_columns(frame, features, where)
            first = False
        columns = [numbers(frame, name, where, INPUT_FIX) for name in features]
        for name, values in zip(features, columns):
            if values.isna().any():
                raise UserError(
                    f"{where}: column '{name}' is empty on line {first_row(values.isna()) + 2}; {INPUT_FIX}"
                )
        inputs = torch.tensor(pd.concat(columns, axis=1).to_numpy(), dtype=torch.float32)
        actual = None
        if target is not None and target in frame.columns:
            actual = torch.tensor(numbers(frame, target, where, INPUT_FIX).to_numpy(), dtype=torch.float32)
        yield InputBatch(_row_ids(frame), inputs, _point_describer(inputs), actual)


def _point_describer(inputs: torch.Tensor) -> Callable[[int], str]:
    return lambda i: "(" + ", ".join(f"{value:.2f}" for value in inputs[i].tolist()) + ")"


def heart_points(source: Path | pd.DataFrame, record: dict[str, Any], batch_size: int) -> Iterator[InputBatch]:
    """Points of the plane: columns x and y."""
    return _points(source, ["x", "y"], None, batch_size)


def line_points(source: Path | pd.DataFrame, record: dict[str, Any], batch_size: int) -> Iterator[InputBatch]:
    """Values of x (column x); a column y, when there, is the actual value."""
    return _points(source, ["x"], "y", batch_size)


def table_rows(source: Path | pd.DataFrame, record: dict[str, Any], batch_size: int) -> Iterator[InputBatch]:
    """Rows with the training's feature columns, prepared with the training's statistics; the target
    column, when there, is the actual value. A category never seen in training counts as missing (one
    warning per value)."""
    stats, where, first = record["preprocessing"], _where(source), True
    target, warned = stats["target"]["column"], set()
    for frame in csv_frames(source, batch_size):
        if first:
            require_columns(frame, feature_columns(stats), where)
            first = False
        table, unknown = apply_statistics(frame, stats, where, INPUT_FIX)
        for column, values in unknown.items():
            for value in values:
                if (column, value) not in warned:
                    warned.add((column, value))
                    warn(f"{where}: {column}={value!r} was never seen in training; it counts as missing")
        actual = None
        if target in frame.columns:
            actual = torch.tensor(numbers(frame, target, where, INPUT_FIX).to_numpy(), dtype=torch.float32)
        inputs = torch.tensor(table.to_numpy(), dtype=torch.float32)
        yield InputBatch(_row_ids(frame), inputs, _row_describer(frame[feature_columns(stats)]), actual)


def _row_describer(frame: pd.DataFrame) -> Callable[[int], str]:
    """'NumRooms=3.0, Alley=NA' for row i, as `predict -n` shows the training rows."""
    return lambda i: describe_row(frame.iloc[i])

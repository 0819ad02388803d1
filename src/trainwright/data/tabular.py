"""Tabular data from a CSV file, prepared with pandas as in the d2l tutorial.

Missing numbers are filled with the column mean, categorical columns are one-hot encoded with an
extra column for missing values, and regression targets are standardized (metrics are reported in
the target's own units).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from trainwright.data.bundle import DataBundle, Task, TensorSplit
from trainwright.errors import UserError, did_you_mean


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV file; unreadable or malformed files become a UserError naming the file."""
    if not path.is_file():
        raise UserError(f"data.path: CSV file not found: {path}")
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise UserError(f"data.path: {path} is empty; expected a header row and data rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"data.path: cannot parse {path}: {str(exc).strip()}") from None


def _numbers(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """The column as floats; a value that is present but not a number is an error naming it."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = frame[column].notna() & values.isna()
    if bad.any():
        row = int(bad.idxmax())
        raise UserError(
            f"{path}: column '{column}' must hold numbers, but line {row + 2} has {frame[column][row]!r}; "
            "fix the value, leave it empty for 'missing', or list the column under data.categorical"
        )
    return values.astype("float64")


def _check_columns(names: list[str], frame: pd.DataFrame, path: Path, key: str) -> None:
    for name in names:
        if name not in frame.columns:
            raise UserError(
                f"{key}: column '{name}' is not in {path}{did_you_mean(name, frame.columns)} "
                f"(columns: {', '.join(frame.columns)})"
            )


def prepare_features(
    frame: pd.DataFrame, numeric: list[str], categorical: list[str], path: Path, standardize: bool
) -> pd.DataFrame:
    """Mean-fill (and optionally standardize) numeric columns; one-hot categoricals with a NaN column."""
    parts = []
    for column in numeric:
        values = _numbers(frame, column, path)
        if values.isna().all():
            raise UserError(f"{path}: numeric column '{column}' has no values at all")
        values = values.fillna(values.mean())
        if standardize and values.std() > 0:
            values = (values - values.mean()) / values.std()
        parts.append(values.rename(column))
    if categorical:
        parts.append(pd.get_dummies(frame[categorical].astype("string"), dummy_na=True, dtype="float64"))
    return pd.concat(parts, axis=1)


def csv(
    path: str,
    target: str,
    numeric: list[str] | None = None,
    categorical: list[str] | None = None,
    standardize: bool = True,
    val_fraction: float = 0.2,
    split_seed: int = 0,
) -> DataBundle:
    """Regression on column `target` of the CSV at `path`.

    Feature columns are `numeric` + `categorical`; when neither is given, every other column is used,
    numeric by dtype and categorical otherwise.
    """
    file = Path(path)
    frame = read_table(file)
    _check_columns([target], frame, file, "data.target")
    if numeric is None and categorical is None:
        features = [c for c in frame.columns if c != target]
        numeric = [c for c in features if pd.api.types.is_numeric_dtype(frame[c])]
        categorical = [c for c in features if c not in numeric]
    numeric, categorical = list(numeric or []), list(categorical or [])
    _check_columns(numeric, frame, file, "data.numeric")
    _check_columns(categorical, frame, file, "data.categorical")
    if not numeric and not categorical:
        raise UserError(f"{file}: no feature columns besides the target '{target}'")
    targets = _numbers(frame, target, file)
    if targets.isna().any():
        row = int(targets.isna().idxmax())
        raise UserError(f"{file}: target column '{target}' is empty on line {row + 2}; every row needs a target")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if len(frame) < 2:
        raise UserError(f"{file}: needs at least 2 data rows, found {len(frame)}")

    table = prepare_features(frame, numeric, categorical, file, standardize)
    inputs = torch.tensor(table.to_numpy(), dtype=torch.float32)
    mean, std = float(targets.mean()), float(targets.std()) or 1.0
    scaled = torch.tensor(((targets - mean) / std).to_numpy(), dtype=torch.float32).unsqueeze(1)

    order = torch.randperm(len(frame), generator=torch.Generator().manual_seed(split_seed))
    n_val = max(1, int(round(len(frame) * val_fraction)))
    train_rows, val_rows = order[n_val:], order[:n_val]
    shown = frame[numeric + categorical]

    def describe(index: int) -> str:
        row = shown.iloc[int(val_rows[index])]
        return ", ".join(f"{name}={'NA' if pd.isna(value) else value}" for name, value in row.items())

    return DataBundle(
        train=TensorSplit(inputs[train_rows], scaled[train_rows]),
        val=TensorSplit(inputs[val_rows], scaled[val_rows]),
        task=Task("regression", target_mean=mean, target_std=std),
        describe_input=describe,
    )

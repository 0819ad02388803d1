"""Tabular data from a CSV file, prepared with pandas as in the d2l tutorial.

Missing numbers are filled with the column mean, categorical columns are one-hot encoded with an
extra column for missing values, and regression targets are standardized (metrics are reported in
the target's own units). Every statistic (fill values, means and standard deviations, categories)
comes from the TRAINING rows only, so nothing about the validation rows leaks into training; the
statistics are recorded in the run dir (data.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from trainwright.data.arguments import check_val_fraction
from trainwright.data.bundle import DataBundle, Task, TensorSplit
from trainwright.data.folds import Fold
from trainwright.errors import UserError, did_you_mean

FLOAT32_MAX = float(np.finfo(np.float32).max)


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


TRAINING_FIX = "fix the value, leave it empty for 'missing', or list the column under data.categorical"


def first_row(flags: pd.Series) -> int:
    """The index label of the first True in `flags`: a row number (0 for the first data line of the file)."""
    return int(cast(int, flags.idxmax()))  # the stubs type index labels as Hashable; a CSV's are row numbers


def numbers(frame: pd.DataFrame, column: str, path: Path | str, fix: str = TRAINING_FIX) -> pd.Series:
    """The column as floats; a value that is present but not a finite number a float32 tensor can hold
    is an error naming it (and `fix`, how to mend it)."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = frame[column].notna() & values.isna()
    if bad.any():
        row = first_row(bad)
        raise UserError(
            f"{path}: column '{column}' must hold numbers, but line {row + 2} has {frame[column][row]!r}; {fix}"
        )
    values = values.astype("float64")
    huge = values.notna() & ~(values.abs() <= FLOAT32_MAX)  # inf, -inf, 1e400 and beyond float32
    if huge.any():
        row = first_row(huge)
        raise UserError(
            f"{path}: column '{column}' line {row + 2} holds {_shown(frame[column][row])}, "
            f"which is not a finite number (or beyond ±{FLOAT32_MAX:.3g}, the float32 range); fix the value or leave "
            "it empty for 'missing'"
        )
    return values


def _shown(value: object) -> str:
    """A cell as the user wrote it, near enough: '1e+300', 'inf', or the text in quotes."""
    return repr(float(value)) if isinstance(value, (int, float, np.number)) else repr(value)


def _check_columns(names: list[str], frame: pd.DataFrame, path: Path, key: str) -> None:
    for name in names:
        if name not in frame.columns:
            raise UserError(
                f"{key}: column '{name}' is not in {path}{did_you_mean(name, frame.columns)} "
                f"(columns: {', '.join(frame.columns)})"
            )


def _finite(value: float, what: str, path: Path) -> float:
    """A statistic of the training rows that must be finite (a column of huge values overflows)."""
    if not np.isfinite(value):
        raise UserError(f"{path}: the {what} of the training rows is not finite ({value}); the values are too large")
    return value


def fit_statistics(
    frame: pd.DataFrame, numeric: list[str], categorical: list[str], path: Path, standardize: bool,
    train_rows: np.ndarray,
) -> dict[str, Any]:
    """What the preparation uses, from the training rows only: the fill value (mean) of each numeric column,
    its mean and standard deviation when standardizing, and the categories of each categorical column."""
    # the column order is kept in lists: data.json sorts the keys of its objects
    stats: dict[str, Any] = {
        "numeric": list(numeric), "categorical": list(categorical), "fill": {}, "standardize": {}, "categories": {},
    }
    for column in numeric:
        train = numbers(frame, column, path).iloc[train_rows]
        if train.isna().all():
            raise UserError(f"{path}: numeric column '{column}' has no values in the training rows")
        fill = stats["fill"][column] = _finite(float(train.mean()), f"mean of '{column}'", path)
        train = train.fillna(fill)
        std = float(train.std())
        if standardize and std > 0:
            _finite(std, f"standard deviation of '{column}'", path)
            stats["standardize"][column] = {"mean": float(train.mean()), "std": std}
    for column in categorical:
        stats["categories"][column] = sorted(frame[column].astype("string").iloc[train_rows].dropna().unique().tolist())
    return stats


def feature_columns(stats: dict[str, Any]) -> list[str]:
    """The input columns the statistics prepare: the numeric ones, then the categorical ones."""
    return [*stats["numeric"], *stats["categorical"]]


def apply_statistics(
    frame: pd.DataFrame, stats: dict[str, Any], path: Path | str, fix: str = TRAINING_FIX
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """The feature table: numeric columns mean-filled (and standardized), categorical ones one-hot with a
    column for missing values, a category the statistics do not know counting as missing. Returns the
    table and the unknown categories found, per column."""
    parts = []
    for column in stats["numeric"]:
        values = numbers(frame, column, path, fix).fillna(stats["fill"][column])
        if column in stats["standardize"]:
            values = (values - stats["standardize"][column]["mean"]) / stats["standardize"][column]["std"]
        parts.append(values.rename(column))
    unknown: dict[str, list[str]] = {}
    if stats["categorical"]:
        columns = {}
        for column in stats["categorical"]:
            known = stats["categories"][column]
            text = frame[column].astype("string")
            seen = text.isin(known)
            if (text.notna() & ~seen).any():
                unknown[column] = sorted(text[text.notna() & ~seen].unique().tolist())
            columns[column] = pd.Categorical(text.where(seen), categories=known)
        parts.append(pd.get_dummies(pd.DataFrame(columns, index=frame.index), dummy_na=True, dtype="float64"))
    return pd.concat(parts, axis=1), unknown


def describe_row(row: pd.Series) -> str:
    """A row as 'NumRooms=3.0, Alley=NA' (the lines of `predict`)."""
    return ", ".join(f"{name}={'NA' if pd.isna(value) else value}" for name, value in row.items())


def _split_rows(count: int, val_fraction: float, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, val rows): a random split with at least one row on each side."""
    check_val_fraction(val_fraction)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(split_seed))
    n_val = min(count - 1, max(1, int(round(count * val_fraction))))
    return order[n_val:], order[:n_val]


# registered as "csv" in components.py; its `path` is pinned (data/paths.py)
def csv(
    path: str,
    target: str,
    numeric: list[str] | None = None,
    categorical: list[str] | None = None,
    standardize: bool = True,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    fold: Fold | None = None,
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
    targets = numbers(frame, target, file)
    if targets.isna().any():
        row = first_row(targets.isna())
        raise UserError(f"{file}: target column '{target}' is empty on line {row + 2}; every row needs a target")
    if len(frame) < 2:
        raise UserError(f"{file}: needs at least 2 data rows, found {len(frame)}")
    train_rows, val_rows = fold.rows(len(frame)) if fold else _split_rows(len(frame), val_fraction, split_seed)

    stats = fit_statistics(frame, numeric, categorical, file, standardize, train_rows.numpy())
    table, _ = apply_statistics(frame, stats, file)  # categories unseen in training rows count as missing
    inputs = torch.tensor(table.to_numpy(), dtype=torch.float32)
    train_targets = targets.iloc[train_rows.numpy()]
    mean = _finite(float(train_targets.mean()), f"mean of '{target}'", file)
    std = _finite(float(train_targets.std()), f"standard deviation of '{target}'", file) if len(train_rows) > 1 else 0.0
    std = std or 1.0
    stats["target"] = {"column": target, "mean": mean, "std": std}
    scaled = torch.tensor(((targets - mean) / std).to_numpy(), dtype=torch.float32).unsqueeze(1)
    shown = frame[numeric + categorical]

    def describe(index: int) -> str:
        return describe_row(shown.iloc[int(val_rows[index])])

    return DataBundle(
        train=TensorSplit(inputs[train_rows], scaled[train_rows]),
        val=TensorSplit(inputs[val_rows], scaled[val_rows]),
        task=Task("regression", target_mean=mean, target_std=std),
        describe_input=describe,
        sources={"data.path": file},
        preprocessing=stats,
    )

"""Tabular data from a CSV file, prepared with pandas as in the d2l tutorial.

Missing numbers are filled with the column mean, categorical columns are one-hot encoded with an
extra column for missing values, and regression targets are standardized (metrics are reported in
the target's own units). Every statistic (fill values, means and standard deviations, categories)
comes from the TRAINING rows only, so nothing about the validation rows leaks into training; the
statistics are recorded in the run dir (data.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from trainwright.data.bundle import DataBundle, Task, TensorSplit
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


def _numbers(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """The column as floats; a value that is present but not a finite number a float32 tensor can hold
    is an error naming it."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = frame[column].notna() & values.isna()
    if bad.any():
        row = int(bad.idxmax())
        raise UserError(
            f"{path}: column '{column}' must hold numbers, but line {row + 2} has {frame[column][row]!r}; "
            "fix the value, leave it empty for 'missing', or list the column under data.categorical"
        )
    values = values.astype("float64")
    huge = values.notna() & ~(values.abs() <= FLOAT32_MAX)  # inf, -inf, 1e400 and beyond float32
    if huge.any():
        row = int(huge.idxmax())
        raise UserError(
            f"{path}: column '{column}' line {row + 2} holds {_shown(frame[column][row])}, which is not a finite number "
            f"(or beyond ±{FLOAT32_MAX:.3g}, the float32 range); fix the value or leave it empty for 'missing'"
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


def prepare_features(
    frame: pd.DataFrame, numeric: list[str], categorical: list[str], path: Path, standardize: bool,
    train_rows: np.ndarray,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Mean-fill (and optionally standardize) numeric columns, one-hot categoricals with a column for
    missing values; every statistic from the training rows. Returns the table and the statistics."""
    stats: dict[str, Any] = {"fill": {}, "standardize": {}, "categories": {}}
    parts = []
    for column in numeric:
        values = _numbers(frame, column, path)
        train = values.iloc[train_rows]
        if train.isna().all():
            raise UserError(f"{path}: numeric column '{column}' has no values in the training rows")
        fill = stats["fill"][column] = _finite(float(train.mean()), f"mean of '{column}'", path)
        values = values.fillna(fill)
        std = float(values.iloc[train_rows].std())
        if standardize and std > 0:
            mean = float(values.iloc[train_rows].mean())
            _finite(std, f"standard deviation of '{column}'", path)
            stats["standardize"][column] = {"mean": mean, "std": std}
            values = (values - mean) / std
        parts.append(values.rename(column))
    if categorical:
        columns = {}
        for column in categorical:
            text = frame[column].astype("string")
            known = stats["categories"][column] = sorted(text.iloc[train_rows].dropna().unique().tolist())
            columns[column] = pd.Categorical(text.where(text.isin(known)), categories=known)  # unseen: missing
        parts.append(pd.get_dummies(pd.DataFrame(columns), dummy_na=True, dtype="float64"))
    return pd.concat(parts, axis=1), stats


def _split_rows(count: int, val_fraction: float, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, val rows): a random split with at least one row on each side."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
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
    if len(frame) < 2:
        raise UserError(f"{file}: needs at least 2 data rows, found {len(frame)}")
    train_rows, val_rows = _split_rows(len(frame), val_fraction, split_seed)

    table, stats = prepare_features(frame, numeric, categorical, file, standardize, train_rows.numpy())
    inputs = torch.tensor(table.to_numpy(), dtype=torch.float32)
    train_targets = targets.iloc[train_rows.numpy()]
    mean = _finite(float(train_targets.mean()), f"mean of '{target}'", file)
    std = _finite(float(train_targets.std()), f"standard deviation of '{target}'", file) if len(train_rows) > 1 else 0.0
    std = std or 1.0
    stats["target"] = {"column": target, "mean": mean, "std": std}
    scaled = torch.tensor(((targets - mean) / std).to_numpy(), dtype=torch.float32).unsqueeze(1)
    shown = frame[numeric + categorical]

    def describe(index: int) -> str:
        row = shown.iloc[int(val_rows[index])]
        return ", ".join(f"{name}={'NA' if pd.isna(value) else value}" for name, value in row.items())

    return DataBundle(
        train=TensorSplit(inputs[train_rows], scaled[train_rows]),
        val=TensorSplit(inputs[val_rows], scaled[val_rows]),
        task=Task("regression", target_mean=mean, target_std=std),
        describe_input=describe,
        sources={"data.path": file},
        preprocessing=stats,
    )

"""Argument values the built-in data sets refuse, checked without reading any data: each builder calls
these, and `trainwright check` calls `check_data_arguments` (registered as the data sets' `check=`), so
`check` refuses what `train` refuses."""

from __future__ import annotations

from typing import Any

from trainwright.errors import UserError


def check_val_fraction(value: float | None) -> None:
    """`data.val_fraction`: a share of the rows strictly between 0 and 1 (None: the data set's own split)."""
    if value is not None and not 0 < value < 1:
        raise UserError(
            f"data.val_fraction must be between 0 and 1 (the share of rows that validate; both splits need rows), "
            f"got {value}"
        )


def check_test_fraction(value: float | None) -> None:
    """`data.test_fraction`: a share of the rows held out as a test split, 0 (none) up to below 1."""
    if value is not None and not 0 <= value < 1:
        raise UserError(f"data.test_fraction must be at least 0 (no test split) and below 1, got {value}")


def check_at_least(key: str, value: int | None, least: int) -> None:
    """A count the data set needs at least `least` of (None: the data set's default)."""
    if value is not None and value < least:
        raise UserError(f"data.{key} must be at least {least}, got {value}")


def check_data_arguments(kwargs: dict[str, Any]) -> None:
    """The built-in data sets' shared arguments, by name (each data set takes some of them)."""
    check_val_fraction(kwargs.get("val_fraction"))
    check_test_fraction(kwargs.get("test_fraction"))
    check_at_least("num_points", kwargs.get("num_points"), 2)
    check_at_least("context", kwargs.get("context"), 1)

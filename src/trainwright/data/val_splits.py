"""Named validation splits (`data.val_splits`) and the names a run's validation and test metrics take.

Each named split is the validation split of the recipe's data set built again with some of its arguments
changed (`{far: {seed: 7}}`, `{other: {root: data/other}}`, or another data set: `{name: ...}`); it must pose
the same task (classes, target scale). The data set's own validation split keeps `val/<metric>`, a named
one logs `val/<name>/<metric>`, and the test split `test/<metric>` (scored once, at the end of the run)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from trainwright.data.bundle import DataBundle, Task, split_size
from trainwright.data.tasks import kind_of
from trainwright.errors import UserError, did_you_mean
from trainwright.recipe import DataConfig, Recipe

# The data section's own keys: how batches are made, not which data (a named split takes the section's).
_LOADER_KEYS = tuple(field.alias or name for name, field in DataConfig.model_fields.items() if name != "name")


def split_arguments(recipe: Recipe, split: str) -> tuple[str, dict[str, Any]]:
    """(data set name, its arguments) of the named split `split`: the data section's, with the split's changes."""
    changes = dict((recipe.data.val_splits or {})[split])
    for key in changes:
        if key in _LOADER_KEYS:
            raise UserError(
                f"data.val_splits.{split}.{key}: a named split takes the data set's arguments only; {key} is the "
                f"data section's own and holds for every split (set data.{key})"
            )
    name = changes.pop("name", recipe.data.name)
    if not isinstance(name, str):
        raise UserError(f"data.val_splits.{split}.name: a data set's name, got {name!r}")
    base = recipe.data.kwargs() if name == recipe.data.name else {}
    return name, {**base, **changes}


def check_val_splits(recipe: Recipe, check: Callable[[str, dict[str, Any]], None]) -> None:
    """Each named split's arguments, checked without reading data (`check`: DATASETS.check)."""
    for split in recipe.data.val_splits or {}:
        name, kwargs = split_arguments(recipe, split)
        try:
            check(name, kwargs)
        except UserError as exc:
            raise _within(split, exc) from None


def prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    """Metrics under their logged names: prefix 'val' -> val/loss, 'val/far' -> val/far/loss, 'test' -> test/loss."""
    return {f"{prefix}/{key}": value for key, value in metrics.items()}


def validation_names(recipe: Recipe, metrics: list[str]) -> list[str]:
    """Every validation metric the run reports: val/loss, val/<metric>, and the same under each named split."""
    prefixes = ["val", *(f"val/{split}" for split in recipe.data.val_splits or {})]
    return [f"{prefix}/{name}" for prefix in prefixes for name in ("loss", *metrics)]


def check_monitor_name(key: str, monitor: str, recipe: Recipe, reported: list[str]) -> None:
    """`key` (checkpoint.monitor, trainer.early_stopping.monitor) must name a validation metric the run
    reports; one message saying what is wrong: a test metric, an unknown split or an unknown metric."""
    if monitor in reported:
        return
    if monitor.startswith("test/"):
        raise UserError(
            f"{key}: '{monitor}' is scored once, at the end of the run, so it cannot choose checkpoints or stop "
            f"early; monitor a validation metric{did_you_mean('val/' + monitor[5:], reported)}"
        )
    parts, splits = monitor.split("/"), list(recipe.data.val_splits or {})
    if len(parts) == 3 and parts[0] == "val" and parts[1] not in splits:
        named = f"data.val_splits names {', '.join(splits)}" if splits else "data.val_splits names none"
        raise UserError(
            f"{key}: '{monitor}' names no validation split '{parts[1]}'{did_you_mean(parts[1], splits)} "
            f"({named}; the data set's own split is val/<metric>)"
        )
    raise UserError(
        f"{key}: this run reports no '{monitor}'{did_you_mean(monitor, reported)} (it reports: {', '.join(reported)})"
    )


Builder = Callable[[str, dict[str, Any]], DataBundle]  # (data set name, its arguments) -> the data set


def build_val_splits(recipe: Recipe, task: Task, build: Builder) -> dict[str, Dataset]:
    """The named splits, each the validation split of `build(data set name, arguments)`; one message for a
    split that poses another task or holds no items."""
    splits = {}
    for split in recipe.data.val_splits or {}:
        name, kwargs = split_arguments(recipe, split)
        where = f"data.val_splits.{split}"
        try:
            bundle = build(name, kwargs)
        except UserError as exc:
            raise _within(split, exc) from None
        if bundle.task != task:
            raise UserError(
                f"{where}: its data pose another task than the training data ({_shown(bundle.task)} against "
                f"{_shown(task)}); a named split must have the same classes (regression: the same target scale), "
                "so change only what picks its rows"
            )
        if split_size(bundle.val) == 0:
            raise UserError(
                f"{where}: its validation split is empty (data set '{name}' with {kwargs} gives no validation "
                "items); give it more data or a larger val_fraction"
            )
        splits[split] = bundle.val
    return splits


def _within(split: str, error: UserError) -> UserError:
    """A data set's message about `data.<key>` as one about the named split's key."""
    message, where = str(error), f"data.val_splits.{split}"
    return UserError(where + message[4:] if message.startswith("data.") else f"{where}: {message}")


def _shown(task: Task) -> str:
    scale = f", target mean {task.target_mean:g} std {task.target_std:g}" if kind_of(task).values else ""
    names = f" ({', '.join(task.class_names)})" if 0 < len(task.class_names) <= 10 else ""
    classes = f", {len(task.class_names)} classes{names}" if task.class_names else ""
    return f"{task.kind}{classes}{scale}"

"""What a validation and the end-of-run test score: every validation split (the data set's own and the named
ones of data.val_splits) under its prefix, the best monitored value so far, and the test split's metrics."""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import Dataset

from trainwright.checkpoint.format import TrainState
from trainwright.data.bundle import DataBundle
from trainwright.data.val_splits import prefixed

Score = Callable[[Dataset], dict[str, float]]  # a split's metrics (loss first) with the run's current weights


def validation_scores(data: DataBundle, score: Score, require_finite: Callable[[float, str], None]) -> dict[str, float]:
    """val/<metric> of the validation split and val/<name>/<metric> of each named split; a non-finite loss
    stops the run (require_finite)."""
    splits = {"val": data.val, **{f"val/{name}": split for name, split in data.val_splits.items()}}
    scored: dict[str, float] = {}
    for prefix, split in splits.items():
        metrics = score(split)
        named = f" of split '{prefix[4:]}'" if prefix != "val" else ""
        require_finite(metrics["loss"], f"validation loss{named}")
        scored.update(prefixed(prefix, metrics))
    return scored


def best_so_far(state: TrainState, monitor: str, mode: str) -> float | None:
    """The best value of the monitored metric, counting the validation just scored into state.val_metrics."""
    monitored, best = state.val_metrics.get(monitor), state.best_metric
    if monitored is None or (best is not None and not (monitored < best if mode == "min" else monitored > best)):
        return best  # (a NaN never improves on it)
    return monitored


def test_scores(data: DataBundle, state: TrainState, score: Score) -> dict[str, float]:
    """test/<metric> of the test split; a data set whose test split is its validation split takes the last
    validation's values (no second pass)."""
    if data.test is data.val:
        metrics = {key[4:]: value for key, value in state.val_metrics.items() if key.count("/") == 1}
    else:
        assert data.test is not None
        metrics = score(data.test)
    return prefixed("test", metrics)

"""`Predictions`, the result of predicting on some items: values or labels and probabilities, as the task's
kind (data/tasks.py) reads the model's outputs."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from trainwright.data.bundle import Task
from trainwright.data.tasks import Kind, kind_of, predicted_labels


def _number(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 1e4 else f"{value:.1f}"


@dataclass
class Predictions:
    """What a model says about some items: `values` (regression, in the data's units) or `labels` and
    `probabilities` (classifiers: one column per class), with the items' ids and, where known, the
    actual values (regression) or class indices (classifiers)."""

    ids: list[str]
    outputs: torch.Tensor  # the model's raw outputs, float, on the CPU
    task: Task
    output_kind: str
    actual: torch.Tensor | None = None
    describe: Callable[[int], str] | None = field(default=None, repr=False)  # how to show item i

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def kind(self) -> Kind:
        return kind_of(self.task)

    @property
    def values(self) -> torch.Tensor:
        """Regression: the predicted values, one per item (all outputs per item when there are several)."""
        values = self.task.decode(self.outputs)
        return values[:, 0] if values.dim() == 2 and values.shape[1] == 1 else values

    @property
    def probabilities(self) -> torch.Tensor:
        """Classifiers: (items, classes); a binary model's two columns are P(class 0) and P(class 1)."""
        return self.kind.probability_columns(self.outputs, self.output_kind)

    @property
    def label_indices(self) -> torch.Tensor:
        return predicted_labels(self.outputs, self.task, self.output_kind)

    @property
    def labels(self) -> list[str]:
        """Classifiers: the predicted class names."""
        return [self.class_name(index) for index in self.label_indices.tolist()]

    def class_name(self, index: int) -> str:
        names = self.task.class_names
        return names[index] if index < len(names) else str(index)

    def class_names(self) -> list[str]:
        count = self.probabilities.shape[1]
        return [self.class_name(index) for index in range(count)]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per item: id, prediction (label or value), actual (where known), p_<class> (classifiers)."""
        rows: list[dict[str, Any]] = [{"id": item} for item in self.ids]
        if self.kind.values:
            for row, value in zip(rows, self.values.tolist()):
                row["prediction"] = value
        else:
            names, probs = self.class_names(), self.probabilities.tolist()
            for row, label, p in zip(rows, self.labels, probs):
                row["prediction"] = label
                row.update({f"p_{name}": value for name, value in zip(names, p)})
        if self.actual is not None:
            actual = self.actual.reshape(len(self), -1)[:, 0].tolist()
            for row, value in zip(rows, actual):
                row["actual"] = value if self.kind.values else self.class_name(int(value))
        return rows

    def lines(self) -> list[str]:
        """One line per item in the tutorials' form: '<input> Predicted: ..., Actual: ...'."""
        lines = []
        actual = None if self.actual is None else self.actual.reshape(len(self), -1)[:, 0].tolist()
        if self.kind.values:
            shown = [_number(v) for v in self.values.reshape(len(self), -1)[:, 0].tolist()]
            known = None if actual is None else [_number(v) for v in actual]
        elif self.kind.single_output:  # P(class 1) per item: shown beside the label
            p = self.probabilities[:, 1].tolist()
            shown = [f"{label} (p={q:.2f})" for label, q in zip(self.labels, p)]
            known = None if actual is None else [self.class_name(int(v)) for v in actual]
        else:
            shown = [f'"{label}"' for label in self.labels]
            known = None if actual is None else [f'"{self.class_name(int(v))}"' for v in actual]
        for i, text in enumerate(shown):
            prefix = f"{self.describe(i)} " if self.describe else ""
            suffix = (
                ""
                if known is None or actual is None or (self.kind.values and math.isnan(actual[i]))
                else f", Actual: {known[i]}"
            )
            lines.append(f"{prefix}Predicted: {text}{suffix}")
        return lines

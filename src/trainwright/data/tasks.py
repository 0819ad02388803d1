"""Task kinds in one place: per kind, which targets fit it, the metrics a run reports by default, what the
model's outputs mean (probabilities, predicted labels or values) and which losses can learn it. Every other
module asks the kind (`kind_of(task)`) instead of testing its name, so a new kind is one entry in KINDS."""

from __future__ import annotations

import torch

from trainwright.data.bundle import Task

_CLASSIFICATION_LOSSES = (
    "bce_with_logits (one output), bce (one output through a sigmoid) or cross_entropy (one output per class)"
)
_REGRESSION_LOSSES = "mse, l1, smooth_l1 or huber"
Shape = tuple[int, ...]
Names = tuple[str, str, str]  # the model's name, the data set's, the model argument that sets the outputs


def _batch_problem(shape: Shape, targets: torch.Tensor, model: str) -> str | None:
    """Outputs that are not one per item of the batch."""
    if not shape or shape[0] != len(targets):
        return f"model '{model}' gives outputs of shape {shape} for a batch of {len(targets)} items"
    return None


def _classes_after_batch_check(shape: Shape, targets: torch.Tensor, task: Task, model: str) -> tuple[int, str | None]:
    """The class count a classifier's outputs must match (the task's names, else the largest target + 1), and
    the problem when the outputs are not one per item."""
    problem = _batch_problem(shape, targets, model)
    return (0 if problem else len(task.class_names) or int(targets.max()) + 1), problem


class Kind:
    """A task kind; the base reads one target per item as a class index (as Multiclass does). Subclasses
    change what differs; a kind of your own is a subclass added to KINDS."""

    name = ""
    classifier = True  # outputs are read as classes: labels, class names, classifier metrics, confusion matrix
    per_position = False  # a target per position (batch, time): tokens counted, padding skipped, text generated
    values = False  # outputs are numbers in the data's units (regression): decoded, shown as values
    single_output = False  # one output per item, P(class 1) through a sigmoid (binary)
    scored_by_model = False  # only a model that computes its own loss (loss.name: model) can learn it
    stratified = True  # cross-validation folds keep the share of each target (the first column's class)
    class_index_targets = True  # targets read from files are integer class indices (else float columns)
    default_metrics: tuple[str, ...] = ("accuracy",)
    default_output = "logits"  # what the outputs are when the loss does not say ('logits', 'probability', 'value')
    logits_over_classes = True  # outputs are logits over classes on their last dimension (perplexity reads them)

    def probabilities(self, outputs: torch.Tensor, output_kind: str) -> torch.Tensor:
        """Class probabilities per item (or position), from the model's outputs."""
        return outputs if output_kind == "probability" else torch.softmax(outputs, dim=-1)

    def predicted_labels(self, outputs: torch.Tensor, output_kind: str) -> torch.Tensor:
        """The predicted class index per item (or position)."""
        return self.probabilities(outputs, output_kind).argmax(dim=-1)

    def probability_columns(self, outputs: torch.Tensor, output_kind: str) -> torch.Tensor:
        """(items, classes): a column per class, as prediction files and plots show them."""
        return self.probabilities(outputs, output_kind)

    def metric_inputs(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The probabilities as torchmetrics' classifier metrics read them."""
        return probabilities

    def label_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """The targets as class indices, compared with `predicted_labels`."""
        return targets

    def fits(self, targets: torch.Tensor, task: Task) -> tuple[torch.Tensor, str] | None:
        """(which targets fit the task, the rule they break otherwise), or None where nothing is checked."""
        if targets.is_floating_point():  # class probabilities, not indices
            return None
        classes = len(task.class_names)
        in_range = (targets >= 0) & (targets < classes if classes else torch.ones_like(targets, dtype=torch.bool))
        if classes and bool((targets >= 0).all()):  # the indices are too large
            return in_range, f"class indices run from 0 to {classes - 1} (the data set names {classes} classes)"
        return in_range, "class indices start at 0 (class 0, 1, 2, ...)"

    def loss_problem(self, loss: str, output_kind: str, data_name: str, task: Task) -> str | None:
        """Why loss `loss` (whose outputs are `output_kind`) cannot learn this kind of task, or None."""
        if output_kind == "value":
            return (f"loss.name={loss} is a regression loss, but data set '{data_name}' is a {self.name} "
                    f"classification task; use {_CLASSIFICATION_LOSSES}")
        return None

    def output_problem(self, shape: Shape, targets: torch.Tensor, task: Task, names: Names) -> str | None:
        """What is wrong with outputs of `shape` for a batch of `targets` (on the first batch), or None.
        `names`: (the model's name, the data set's, the model argument that sets the number of outputs)."""
        model, data_name, argument = names
        problem = _batch_problem(shape, targets, model)
        if problem is not None or shape == tuple(targets.shape):
            return problem
        per_item = targets.shape[1] if targets.ndim == 2 else 1
        return (
            f"model '{model}' gives outputs of shape {shape} per batch, but the {self.name} targets of "
            f"data set '{data_name}' have shape {tuple(targets.shape)}; set {argument}={per_item}"
        )


class Multiclass(Kind):
    """One class index per item; the model gives one output per class."""

    name = "multiclass"

    def loss_problem(self, loss: str, output_kind: str, data_name: str, task: Task) -> str | None:
        if output_kind != "value" and loss in ("bce", "bce_with_logits"):
            return (f"loss.name={loss} is for binary tasks, but data set '{data_name}' has "
                    f"{len(task.class_names) or 'several'} classes; use cross_entropy")
        return super().loss_problem(loss, output_kind, data_name, task)

    def output_problem(self, shape: Shape, targets: torch.Tensor, task: Task, names: Names) -> str | None:
        model, data_name, argument = names
        classes, problem = _classes_after_batch_check(shape, targets, task, model)
        if problem is not None:
            return problem
        if len(shape) == 2 and shape[1] == classes:
            return None
        per_position = len(shape) == 3 and shape[-1] == classes
        return (
            f"model '{model}' gives outputs of shape {shape} per batch, but data set "
            f"'{data_name}' has {classes} classes (one output per class: "
            f"shape ({len(targets)}, {classes}))"
            + ("; it gives a class per position: a per-position (sequence) task needs a data set whose task "
               "is 'sequence', with targets of shape (batch, time)" if per_position else f"; set {argument}={classes}")
        )


class Binary(Kind):
    """One 0/1 target per item; the model gives one output per item (P(class 1) through a sigmoid)."""

    name = "binary"
    single_output = True
    class_index_targets = False
    logits_over_classes = False

    def probabilities(self, outputs: torch.Tensor, output_kind: str) -> torch.Tensor:
        return outputs if output_kind == "probability" else torch.sigmoid(outputs)

    def predicted_labels(self, outputs: torch.Tensor, output_kind: str) -> torch.Tensor:
        probs = self.probabilities(outputs, output_kind)
        return (probs.reshape(len(probs), -1)[:, 0] > 0.5).long()

    def probability_columns(self, outputs: torch.Tensor, output_kind: str) -> torch.Tensor:
        positive = self.metric_inputs(self.probabilities(outputs, output_kind))
        return torch.stack([1 - positive, positive], dim=1)

    def metric_inputs(self, probabilities: torch.Tensor) -> torch.Tensor:
        return probabilities.reshape(len(probabilities), -1)[:, 0]

    def label_targets(self, targets: torch.Tensor) -> torch.Tensor:
        return targets.reshape(-1).long()

    def fits(self, targets: torch.Tensor, task: Task) -> tuple[torch.Tensor, str] | None:
        return (targets == 0) | (targets == 1), (
            "a binary task's targets are 0 or 1 (for more classes use task: multiclass, for other numbers "
            "task: regression)"
        )

    def loss_problem(self, loss: str, output_kind: str, data_name: str, task: Task) -> str | None:
        if output_kind != "value" and loss == "cross_entropy":
            return ("loss.name=cross_entropy needs one output per class and class indices, but data set "
                    f"'{data_name}' is a binary task with one 0/1 target per item; use bce_with_logits (one output) "
                    "or bce (one output through a sigmoid)")
        return super().loss_problem(loss, output_kind, data_name, task)


class Regression(Kind):
    """Numbers per item, possibly served standardized (Task.decode maps them back)."""

    name = "regression"
    classifier = False
    stratified = False
    class_index_targets = False
    values = True
    default_metrics = ("mae",)
    default_output = "value"
    logits_over_classes = False

    def fits(self, targets: torch.Tensor, task: Task) -> tuple[torch.Tensor, str] | None:
        if not targets.is_floating_point():
            return None
        return torch.isfinite(targets), "regression targets must be finite numbers"

    def loss_problem(self, loss: str, output_kind: str, data_name: str, task: Task) -> str | None:
        if output_kind != "value":
            return (f"loss.name={loss} is a classification loss, but data set '{data_name}' is a regression task; "
                    f"use {_REGRESSION_LOSSES}")
        return None


class Sequence(Kind):
    """A class per position (language modelling, token tagging): outputs (batch, time, classes), integer
    targets (batch, time); positions whose target is the task's ignore_index (padding) are not counted."""

    name = "sequence"
    classifier = False
    per_position = True
    default_metrics = ("accuracy", "perplexity")

    def fits(self, targets: torch.Tensor, task: Task) -> tuple[torch.Tensor, str] | None:
        if targets.is_floating_point():
            return None
        classes = len(task.class_names)
        in_range = (targets >= 0) & (targets < classes if classes else torch.ones_like(targets, dtype=torch.bool))
        return in_range | (targets == task.ignore_index), (
            f"token ids run from 0 to {classes - 1} ({classes} tokens in the vocabulary), or are "
            f"{task.ignore_index} (padding)" if classes else "token ids start at 0"
        )

    def loss_problem(self, loss: str, output_kind: str, data_name: str, task: Task) -> str | None:
        if output_kind != "logits":
            return (f"loss.name={loss} does not score class logits, but data set '{data_name}' is a sequence task "
                    "(a class per position); use cross_entropy (outputs (batch, time, classes), targets (batch, time))")
        return None

    def output_problem(self, shape: Shape, targets: torch.Tensor, task: Task, names: Names) -> str | None:
        model, data_name, argument = names
        classes, problem = _classes_after_batch_check(shape, targets, task, model)
        if problem is not None:
            return problem
        expected = (*targets.shape, classes)
        if shape == expected:
            return None
        return (
            f"model '{model}' gives outputs of shape {shape} per batch, but data set "
            f"'{data_name}' is a sequence task with targets of shape {tuple(targets.shape)} (batch, "
            f"time) and {classes} classes per position: outputs must have shape {expected} (batch, time, "
            f"classes)" + (f"; set {argument}={classes}" if shape[:-1] == expected[:-1] else "")
        )


class ScoredByModel(Kind):
    """Whatever the data hold, scored by the model itself (loss.name: model: a denoising or contrastive
    model, a model given a teacher): the run reports its loss alone and nothing reads the outputs."""

    name = "scored_by_model"
    classifier = False
    stratified = False
    class_index_targets = False
    scored_by_model = True
    default_metrics = ()
    logits_over_classes = False

    def fits(self, targets: torch.Tensor, task: Task) -> tuple[torch.Tensor, str] | None:
        return None

    def loss_problem(self, loss: str, output_kind: str, data_name: str, task: Task) -> str | None:
        return (f"loss.name={loss}: data set '{data_name}' poses a task that only the model can score "
                "(scored_by_model); use loss.name=model with a model that returns its own loss")

    def output_problem(self, shape: Shape, targets: torch.Tensor, task: Task, names: Names) -> str | None:
        return None  # nothing reads the outputs


KINDS: dict[str, Kind] = {
    kind.name: kind for kind in (Binary(), Multiclass(), Regression(), Sequence(), ScoredByModel())
}


def kind_of(task: Task) -> Kind:
    """The kind of `task` (its rules and what its outputs mean)."""
    return KINDS[task.kind]


def probabilities(outputs: torch.Tensor, task: Task, output_kind: str) -> torch.Tensor:
    """Binary: P(class 1) per item; classes: class probabilities per item (or position)."""
    return kind_of(task).probabilities(outputs, output_kind)


def predicted_labels(outputs: torch.Tensor, task: Task, output_kind: str) -> torch.Tensor:
    """Class index per item (or position) for tasks read as classes."""
    return kind_of(task).predicted_labels(outputs, output_kind)


def all_default_metrics() -> list[str]:
    """Every metric some kind reports by default (what a run may report before its data say the kind)."""
    return list(dict.fromkeys(name for kind in KINDS.values() for name in kind.default_metrics))

"""The step: what a batch is, how the model is called and what is scored. A registered component
(`step.name`, default `default`; a class of your own by import path 'package.module:Class'), built once per
run with the scoring's loss and task (components.build_scoring) and used by training, evaluation,
prediction, lr-find and the start-up check alike.

A step subclasses `Step` and overrides `score(model, batch) -> Scored` (the batch is on the model's
device; the loss is a mean over what `count(batch)` counts, where a step says so). The loops ask a step
for specialised functions once per pass over the data, from its first batch (`scorer`, `training`), so a
training step does no checks of its own.

The default step (`DefaultStep`) takes the forms a batch and a model's result take:

  batch form       recipe loss                                  loss.name: model
  (inputs, targets) loss(model(inputs), targets)                model(inputs, targets)["loss"]
  {name: tensor}    loss(model(**batch without labels), labels)  model(**batch)["loss"]

A model that takes `input_ids` by name (a Hugging Face model) is given a pair's inputs as `input_ids`
(and, computing its own loss, the targets as `labels`; a causal LM also as `shift_labels`, since a pair's
targets are the next tokens already). A model that returns a mapping is read for its `logits`. A model
that shifts its labels itself (a Hugging Face causal LM given `labels` = `input_ids`: logits at position t
predict the label at t + 1, marked by `SHIFTS_LABELS`) is scored on those pairs, so the loss and per-token
metrics compare what it predicted with what came next; a batch that carries `shift_labels` is aligned.

Loss normalisation: for sequence tasks (tokens, some of them padding) the loss of one optimizer step is
the sum over its counted targets divided by their number over the WHOLE step (every process, every
micro-batch), so the updates do not depend on the process count or on gradient accumulation. The counts
of a step's micro-batches are read before the first of them runs, and summed over processes in one
all-reduce of one number per step (none on one process without accumulation, where a mean is the same).
"""

from __future__ import annotations

import copy
import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from trainwright.data.tasks import kind_of
from trainwright.errors import UserError

if TYPE_CHECKING:
    from trainwright.data.bundle import Task
    from trainwright.distributed.processes import Processes

Batch = tuple[torch.Tensor, torch.Tensor] | Mapping[str, torch.Tensor]
Pair = tuple[torch.Tensor, torch.Tensor]  # a batch of the tuple form (a step serves every batch in its first's form)
Named = Mapping[str, torch.Tensor]  # a batch of named tensors
TARGETS_KEY = "labels"  # the targets of a mapping batch (Hugging Face's name)
MODEL_LOSS = "model"  # loss.name of a model that computes its own loss
SHIFTS_LABELS = "trainwright_shifts_labels"  # a model attribute: True when it scores labels[:, t + 1] at t
ALIGNED_LABELS_KEY = "shift_labels"  # a mapping batch's labels already aligned with the logits (transformers' name)
NAMED_INPUTS = "input_ids"  # a model's first argument by this name: it is called by name (a Hugging Face model)


class ModelLoss(nn.Module):
    """`loss.name: model`: the model computes its own loss (its result's `loss`); the recipe's loss is not called."""

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("loss.name: model means the model returns its own loss; this loss is never called")


@dataclass(frozen=True)
class Scored:
    """One batch through the model: its mean loss, and what metrics read (None where the batch or the model
    has no such thing: a mapping batch without labels, a model result without logits)."""

    loss: torch.Tensor
    outputs: torch.Tensor | None
    targets: torch.Tensor | None


@dataclass(frozen=True)
class Training:
    """What the training loop calls for one pass over the data: `loss(batch)`, the loss to back-propagate
    (the loop divides it by the number of micro-batches of the optimizer step, and DDP averages the
    gradients over the processes), and `batches(batches, group_sizes)`, the pass's batches as the step wants
    them served (a counting step reads each optimizer step's batches ahead, to weigh them)."""

    loss: Callable[[Batch], torch.Tensor]
    batches: Callable[[Iterator[Batch], Iterable[int]], Iterator[Batch]]


def _as_served(batches: Iterator[Batch], sizes: Iterable[int]) -> Iterator[Batch]:
    return batches


class Step:
    """How a run's batches go through its model and are scored. Built once per run with the recipe's loss
    (`loss_fn`: a ModelLoss when the model computes its own) and the data's `task`; a step of your own takes
    these two arguments first (the recipe's `step` section gives any others) and overrides `score`."""

    def __init__(self, loss_fn: nn.Module, task: Task) -> None:
        self.loss_fn = loss_fn
        self.task = task

    def score(self, model: nn.Module, batch: Batch) -> Scored:
        """One batch (on the model's device) through the model: its mean loss (float32), and the outputs and
        targets the metrics read."""
        raise NotImplementedError(f"{type(self).__name__} must define score(model, batch)")

    def count(self, batch: Batch) -> torch.Tensor | None:
        """How many targets of `batch` (on the CPU) its loss is the mean over, where that varies from batch to
        batch (padding): then each optimizer step weighs its batches by these counts over the whole step. None
        (the default): every item counts once, and a batch's loss is its mean."""
        return None

    def with_loss(self, loss_fn: nn.Module) -> Step:
        """This step scoring with `loss_fn` instead (the start-up check watches the recipe's loss)."""
        clone = copy.copy(self)
        clone.loss_fn = loss_fn
        return clone

    # --- what the loops call: specialised once per pass from its first batch ----------------------------

    def scorer(self, model: nn.Module, first: Batch, device: torch.device) -> Callable[[Batch], Scored]:
        """batch -> Scored, for batches of the form of `first` (moved to `device`)."""
        return lambda batch: self.score(model, to_device(batch, device))

    def training(self, model: nn.Module, first: Batch, device: torch.device, processes: Processes,
                 accum: int) -> Training:
        """The training functions for batches of the form of `first` on `processes` with `accum` micro-batches
        per optimizer step."""
        scorer = self.scorer(model, first, device)
        if not _weighs(self, first, processes, accum):
            return Training(lambda batch: scorer(batch).loss, _as_served)
        weights = StepWeights(self.count, processes)

        def weighed(batch: Batch) -> torch.Tensor:
            loss = scorer(batch).loss
            count = cast(torch.Tensor, self.count(batch))  # a weighed step counts each batch (_weighs)
            return torch.where(count > 0, loss * count.to(loss.device), 0.0) * weights.scale

        return Training(weighed, weights.batches)


def _weighs(step: Step, first: Batch, processes: Processes, accum: int) -> bool:
    """Whether a step's batches are weighed by their counts: it counts, and a step spans several batches."""
    return (processes.world_size > 1 or accum > 1) and step.count(first) is not None


class StepWeights:
    """Each optimizer step's scale: processes x micro-batches / the counted targets of the whole step, so
    that a micro-batch's loss SUM times it, divided by the micro-batches (the loop) and averaged over the
    processes (DDP), is the step's sum over its count; and the training loss logged is the step's mean."""

    def __init__(self, count: Callable[[Batch], torch.Tensor | None], processes: Processes) -> None:
        self.count, self.processes = count, processes
        self.scale = torch.ones((), device=processes.device)

    def batches(self, batches: Iterator[Batch], sizes: Iterable[int]) -> Iterator[Batch]:
        """`batches`, each optimizer step's (of `sizes` micro-batches) read before the first is yielded."""
        processes = self.processes
        for size in sizes:
            group = list(itertools.islice(batches, size))
            if not group:
                return
            local = torch.stack([torch.as_tensor(self.count(batch)) for batch in group]).sum()
            total = processes.sum(local.to(processes.device, torch.float64))
            self.scale = (processes.world_size * len(group) / total.clamp(min=1)).float()
            yield from group


def group_sizes(start: int, end: int, accum: int) -> Iterator[int]:
    """The micro-batches of each optimizer step from batch `start` (a step's first) to `end` of an epoch."""
    for first in range(start, end, accum):
        yield min(first + accum, end) - first


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch on `device`: every tensor of a tuple or a mapping (other values are left as they are)."""
    if isinstance(batch, Mapping):
        return {key: _moved(value, device) for key, value in batch.items()}
    return tuple(_moved(value, device) for value in batch)


def _moved(value: Any, device: torch.device) -> Any:
    return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value


def describe(batch: Batch) -> str:
    """The batch's shapes, for messages: 'inputs (64, 2), targets (64, 1)' or 'input_ids (8, 32), labels (8, 32)'."""
    named = batch.items() if isinstance(batch, Mapping) else zip(("inputs", "targets"), batch)
    return ", ".join(f"{key} {tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}"
                     for key, value in named)


def logits_of(result: Any) -> torch.Tensor | None:
    """The model's outputs as a tensor: the tensor itself, or a mapping's `logits` (None when it has none)."""
    if isinstance(result, torch.Tensor):
        return result
    if isinstance(result, Mapping):
        return result.get("logits")
    return None


def unwrapped(model: nn.Module) -> nn.Module:
    """The module a DDP (or compile) wrapper holds, else `model`."""
    return getattr(model, "module", getattr(model, "_orig_mod", model))


def shifts_labels(model: nn.Module) -> bool:
    """Whether `model` (or the module a DDP wrapper holds) predicts its `labels` one position ahead."""
    return bool(getattr(unwrapped(model), SHIFTS_LABELS, False))


def takes_named_inputs(model: nn.Module) -> bool:
    """Whether the model's forward takes `input_ids` first (a Hugging Face model): it is called by name."""
    try:
        parameters = list(inspect.signature(unwrapped(model).forward).parameters)
    except (TypeError, ValueError):
        return False
    return bool(parameters) and parameters[0] == NAMED_INPUTS


def own_loss(result: Any) -> torch.Tensor:
    """The loss a model computed itself (`loss.name: model`): its result's `loss`."""
    loss = result.get("loss") if isinstance(result, Mapping) else None
    if not isinstance(loss, torch.Tensor):
        got = "a mapping without 'loss'" if isinstance(result, Mapping) else type(result).__name__
        raise UserError(
            f"loss.name: model needs the model to return a mapping (e.g. a Hugging Face ModelOutput) with its "
            f"'loss', but it returned {got}; give the batch labels (a Hugging Face model computes the loss "
            "from `labels`), or name a loss such as cross_entropy"
        )
    return loss


def _as_outputs(result: Any) -> torch.Tensor:
    """A model's result scored by the recipe's loss: a tensor, or a mapping's `logits`, as float32."""
    logits = logits_of(result)
    if logits is None:
        raise UserError(
            f"the model returns {type(result).__name__}, not a tensor (or a mapping with 'logits') for the "
            "recipe's loss to score; if it computes its own loss, set loss.name: model"
        )
    return logits.float()


def summed(loss_fn: nn.Module) -> nn.Module | None:
    """A copy of a torch loss (or of a loss wrapping one as `.loss`, as losses.PerPosition) that sums
    instead of averaging; None for a loss without a `reduction`."""
    clone = copy.deepcopy(loss_fn)  # (a shallow copy of a module shares its submodules with the original)
    inner = getattr(clone, "loss", None)
    target: Any = inner if isinstance(inner, nn.Module) and hasattr(inner, "reduction") else clone
    if getattr(target, "reduction", None) != "mean":
        return None
    target.reduction = "sum"
    return clone


class DefaultStep(Step):
    """Today's step: the batch forms and model results of the table in the module's docstring."""

    def __init__(self, loss_fn: nn.Module, task: Task) -> None:
        super().__init__(loss_fn, task)
        self.model_loss = isinstance(loss_fn, ModelLoss)
        self.shifted: bool | None = None  # whether the run's model shifts its labels (known once a pass starts)

    def count(self, batch: Batch) -> torch.Tensor | None:
        """Sequence tasks: the targets not equal to the task's ignore index (those the loss scores)."""
        if not kind_of(self.task).per_position:
            return None
        targets = self._targets(batch)
        return None if targets is None else (targets != self.task.ignore_index).sum()

    def _targets(self, batch: Batch) -> torch.Tensor | None:
        """The targets the loss scores, as the model's outputs are aligned with them."""
        if not isinstance(batch, Mapping):
            return batch[1]
        if ALIGNED_LABELS_KEY in batch:
            return batch[ALIGNED_LABELS_KEY]
        targets = batch.get(TARGETS_KEY)
        return targets[:, 1:] if targets is not None and self.shifted else targets

    def scorer(self, model: nn.Module, first: Batch, device: torch.device) -> Callable[[Batch], Scored]:
        self.shifted = shifts_labels(model)
        return self._scorer(model, first, device, self.loss_fn)

    def training(self, model: nn.Module, first: Batch, device: torch.device, processes: Processes,
                 accum: int) -> Training:
        self.shifted = shifts_labels(model)
        if _weighs(self, first, processes, accum):
            return self._weighed(model, first, device, processes)
        if isinstance(first, Mapping) or self.model_loss or takes_named_inputs(model):
            scorer = self._scorer(model, first, device, self.loss_fn)
            return Training(lambda batch: scorer(batch).loss, _as_served)
        loss_fn = self.loss_fn  # the tutorials' form: kept as lean as it was
        if device.type == "cpu":  # batches are made on the CPU; .to() there would return them as they are

            def plain(batch: Batch) -> torch.Tensor:
                inputs, targets = batch
                return loss_fn(_tensor(model(inputs)), targets)

            return Training(plain, _as_served)

        def plain_moved(batch: Batch) -> torch.Tensor:
            inputs, targets = cast(Pair, batch)
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            return loss_fn(_tensor(model(inputs)), targets)

        return Training(plain_moved, _as_served)

    def _weighed(self, model: nn.Module, first: Batch, device: torch.device, processes: Processes) -> Training:
        """Losses summed over a batch's counted targets, scaled by the step's weights (see StepWeights)."""
        weights = StepWeights(self.count, processes)
        total = None if self.model_loss else summed(self.loss_fn)
        if total is not None:
            scorer = self._scorer(model, first, device, total)
            return Training(lambda batch: scorer(batch).loss * weights.scale, weights.batches)
        scorer = self._scorer(model, first, device, self.loss_fn)  # a mean we cannot sum: times its count

        def weighed(batch: Batch) -> torch.Tensor:
            loss, count = scorer(batch).loss, self.count(batch).to(device)  # type: ignore[union-attr]
            return torch.where(count > 0, loss * count, 0.0) * weights.scale

        return Training(weighed, weights.batches)

    def _scorer(self, model: nn.Module, first: Batch, device: torch.device,
                loss_fn: nn.Module) -> Callable[[Batch], Scored]:
        model_loss, shifted = self.model_loss, self.shifted
        if isinstance(first, Mapping):

            def named(batch: Batch) -> Scored:
                batch = cast(Named, to_device(batch, device))
                labels = batch.get(TARGETS_KEY)
                aligned = batch.get(ALIGNED_LABELS_KEY)
                if model_loss:
                    result = model(**batch)
                    logits, targets = logits_of(result), labels if aligned is None else aligned
                    if logits is not None and shifted and aligned is None and targets is not None:
                        logits, targets = logits[:, :-1], targets[:, 1:]
                    return Scored(own_loss(result).float(), None if logits is None else logits.float(), targets)
                if labels is None:
                    raise UserError(
                        f"a batch of named tensors ({', '.join(batch)}) has no '{TARGETS_KEY}' for loss "
                        f"'{type(loss_fn).__name__}'; add '{TARGETS_KEY}' to the batch, or set loss.name: model "
                        "if the model computes its own loss"
                    )
                inputs = {k: v for k, v in batch.items() if k not in (TARGETS_KEY, ALIGNED_LABELS_KEY)}
                outputs = _as_outputs(model(**inputs))
                targets = labels if aligned is None else aligned
                if shifted and aligned is None:
                    outputs, targets = outputs[:, :-1], targets[:, 1:]
                return Scored(loss_fn(outputs, targets), outputs, targets)

            return named

        if takes_named_inputs(model):  # a pair's inputs are token ids; its targets the next tokens

            def pair_named(batch: Batch) -> Scored:
                inputs, targets = cast(Pair, to_device(batch, device))
                if model_loss:
                    aligned = {ALIGNED_LABELS_KEY: targets} if shifted else {}
                    result = model(**{NAMED_INPUTS: inputs, TARGETS_KEY: targets, **aligned})
                    logits = logits_of(result)
                    return Scored(own_loss(result).float(), None if logits is None else logits.float(), targets)
                outputs = _as_outputs(model(**{NAMED_INPUTS: inputs}))
                return Scored(loss_fn(outputs, targets), outputs, targets)

            return pair_named

        def pair(batch: Batch) -> Scored:
            inputs, targets = cast(Pair, to_device(batch, device))
            if model_loss:
                result = model(inputs, targets)
                logits = logits_of(result)
                return Scored(own_loss(result).float(), None if logits is None else logits.float(), targets)
            outputs = _as_outputs(model(inputs))
            return Scored(loss_fn(outputs, targets), outputs, targets)

        return pair


def _tensor(result: Any) -> torch.Tensor:
    """The lean path's outputs: a tensor as float32 (a mapping's logits, where a model returns one)."""
    return result.float() if isinstance(result, torch.Tensor) else _as_outputs(result)

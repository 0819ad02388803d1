"""What a batch is and how it is scored: the one place that knows the forms a batch and a model's result take.

A batch is an `(inputs, targets)` tuple, or a mapping of named tensors (moved to the device as a whole;
its `labels`, where present, are the targets). A model returns a tensor, scored by the recipe's loss, or,
with `loss.name: model`, computes its own loss and returns a mapping (a Hugging Face `ModelOutput`) with
`loss` (and `logits`, which the metrics read):

  batch form       recipe loss                                  loss.name: model
  (inputs, targets) loss(model(inputs), targets)                model(inputs, targets)["loss"]
  {name: tensor}    loss(model(**batch without labels), labels)  model(**batch)["loss"]

A model that returns a mapping is read for its `logits`. A model that shifts its labels itself (a
Hugging Face causal LM given `labels` = `input_ids`: logits at position t predict the label at t + 1,
marked by `SHIFTS_LABELS`) is scored on those pairs, so per-token metrics compare what it predicted with
what came next; a batch that carries `shift_labels` is already aligned. The form is chosen once per pass
over the data from its first batch (`Step.train_loss`, `Step.scorer`), so a training step does no checks
of its own.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainwright.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor] | Mapping[str, torch.Tensor]
TARGETS_KEY = "labels"  # the targets of a mapping batch (Hugging Face's name)
MODEL_LOSS = "model"  # loss.name of a model that computes its own loss
SHIFTS_LABELS = "trainwright_shifts_labels"  # a model attribute: True when it scores labels[:, t + 1] at t
ALIGNED_LABELS_KEY = "shift_labels"  # a mapping batch's labels already aligned with the logits (transformers' name)


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


def peek(batches: Iterator[Batch]) -> tuple[Batch | None, Iterator[Batch]]:
    """The first batch (None when there is none) and an iterator over all of them, the first included."""
    first = next(batches, None)
    return first, batches if first is None else itertools.chain([first], batches)


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


def shifts_labels(model: nn.Module) -> bool:
    """Whether `model` (or the module a DDP wrapper holds) predicts its `labels` one position ahead."""
    return bool(getattr(getattr(model, "module", model), SHIFTS_LABELS, False))


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


class Step:
    """How one run's batches go through its model and are scored; `loss_fn` is the recipe's loss (a
    ModelLoss when the model computes its own), `device` where the batches go (they are made on the CPU)."""

    def __init__(self, loss_fn: nn.Module, device: torch.device) -> None:
        self.loss_fn = loss_fn
        self.model_loss = isinstance(loss_fn, ModelLoss)
        self.device = device

    def train_loss(self, model: nn.Module, first: Batch) -> Callable[[Batch], torch.Tensor]:
        """batch -> its mean loss (float32), for batches of the form of `first`; no more checks per batch."""
        loss_fn, device = self.loss_fn, self.device
        if not isinstance(first, Mapping) and not self.model_loss:  # the tutorials' form: kept as lean as it was
            if device.type == "cpu":  # batches are made on the CPU; .to() there would return them as they are

                def plain(batch: Batch) -> torch.Tensor:
                    inputs, targets = batch
                    return loss_fn(model(inputs).float(), targets)

                return plain

            def plain_moved(batch: Batch) -> torch.Tensor:
                inputs, targets = batch
                inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                return loss_fn(model(inputs).float(), targets)

            return plain_moved
        scorer = self.scorer(model, first)
        return lambda batch: scorer(batch).loss

    def scorer(self, model: nn.Module, first: Batch) -> Callable[[Batch], Scored]:
        """batch -> Scored (loss, outputs, targets) for batches of the form of `first` (moved to the device)."""
        loss_fn, device, model_loss = self.loss_fn, self.device, self.model_loss
        if isinstance(first, Mapping):
            shifted = model_loss and shifts_labels(model)

            def named(batch: Batch) -> Scored:
                batch = to_device(batch, device)
                targets = batch.get(TARGETS_KEY)
                if model_loss:
                    result = model(**batch)
                    logits = logits_of(result)
                    if logits is not None and shifted and targets is not None and ALIGNED_LABELS_KEY not in batch:
                        logits, targets = logits[:, :-1], targets[:, 1:]
                    return Scored(own_loss(result).float(), None if logits is None else logits.float(), targets)
                if targets is None:
                    raise UserError(
                        f"a batch of named tensors ({', '.join(batch)}) has no '{TARGETS_KEY}' for loss "
                        f"'{type(loss_fn).__name__}'; add '{TARGETS_KEY}' to the batch, or set loss.name: model "
                        "if the model computes its own loss"
                    )
                outputs = _as_outputs(model(**{k: v for k, v in batch.items() if k != TARGETS_KEY}))
                return Scored(loss_fn(outputs, targets), outputs, targets)

            return named

        def pair(batch: Batch) -> Scored:
            inputs, targets = to_device(batch, device)
            if model_loss:
                result = model(inputs, targets)
                logits = logits_of(result)
                return Scored(own_loss(result).float(), None if logits is None else logits.float(), targets)
            outputs = _as_outputs(model(inputs))
            return Scored(loss_fn(outputs, targets), outputs, targets)

        return pair


def _as_outputs(result: Any) -> torch.Tensor:
    """A model's result scored by the recipe's loss: a tensor, or a mapping's `logits`, as float32."""
    logits = logits_of(result)
    if logits is None:
        raise UserError(
            f"the model returns {type(result).__name__}, not a tensor (or a mapping with 'logits') for the "
            "recipe's loss to score; if it computes its own loss, set loss.name: model"
        )
    return logits.float()

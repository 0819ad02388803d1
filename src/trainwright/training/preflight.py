"""Start-up checks on the built components, before the run dir is touched: a recipe that cannot train
is one message and no folder, instead of a traceback (or silent garbage) once training has started.

  * the loss fits the task (no cross-entropy on a one-output binary model, no BCE on regression),
  * the model fits the data: one batch through the model and the loss (shapes, classes, probabilities),
  * the optimizer and LR scheduler survive their first steps (on a throwaway parameter),
  * checkpoint.monitor names a metric the run reports,
  * resumed data are the data the run trained on (data.json).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from trainwright.components import build_scheduler, check_monitor, optimizer_over
from trainwright.data.bundle import DataBundle, split_size
from trainwright.data.fingerprint import check_same_data, data_record
from trainwright.data.loading import iterate
from trainwright.data.targets import check_targets
from trainwright.data.tasks import kind_of
from trainwright.errors import UserError
from trainwright.recipe import Recipe
from trainwright.registry import MODELS
from trainwright.run.plan import RunPlan
from trainwright.step import MODEL_LOSS, TARGETS_KEY, Batch, ModelLoss, describe
from trainwright.training.evaluation import Scoring


def check_startup(
    recipe: Recipe, plan: RunPlan, data: DataBundle, model: nn.Module, scoring: Scoring, total_steps: int
) -> dict[str, Any]:
    """Run every start-up check (UserError on the first problem); returns the data record for data.json."""
    check_monitor(recipe, scoring.names)
    check_loss_fits_task(recipe, data, scoring)
    check_first_batch(recipe, data, model, scoring)
    dry_run_optimizer(recipe, total_steps)
    check_profile_window(recipe, total_steps)
    if plan.resume_from is None:
        return data_record(data)
    saved = plan.run.read_json(plan.run.data_file)
    record = data_record(data, saved)
    check_same_data(saved, record, plan.run.path, plan.allow_data_change)
    return record


def check_profile_window(recipe: Recipe, total_steps: int) -> None:
    """trainer.profile must start at a step the run reaches (a window past the end is cut there)."""
    profile = recipe.trainer.profile
    if profile is not None and profile.start_step > total_steps:
        raise UserError(
            f"trainer.profile.start_step={profile.start_step} is beyond the run's {total_steps} optimizer steps; "
            f"choose a step from 1 to {total_steps}"
        )


def check_loss_fits_task(recipe: Recipe, data: DataBundle, scoring: Scoring) -> None:
    """A classification loss on regression data, or the reverse, cannot learn the task (the task's kind
    says which losses can: data/tasks.py)."""
    if recipe.loss.name == MODEL_LOSS:  # the model scores itself; its logits, if any, are read by the task's kind
        return
    problem = kind_of(data.task).loss_problem(recipe.loss.name, scoring.output_kind, recipe.data.name, data.task)
    if problem is not None:
        raise UserError(problem)


def _output_argument(recipe: Recipe) -> str:
    """Which model argument sets the number of outputs, for messages ('model.out_features', ...)."""
    try:
        params = inspect.signature(MODELS.get(recipe.model.name)).parameters
    except (TypeError, ValueError):
        return "the model's number of outputs"
    name = next(
        (p for p in ("num_classes", "out_features", "num_outputs", "outputs", "vocab_size") if p in params), None
    )
    return f"model.{name}" if name else "the model's number of outputs"


@torch.no_grad()
def check_first_batch(recipe: Recipe, data: DataBundle, model: nn.Module, scoring: Scoring) -> None:
    """One batch of training data through the model (eval mode, RNG untouched) and the loss."""
    count = min(recipe.data.batch_size, split_size(data.train))
    batch = next(iterate(data.train, iter([torch.arange(count)])))
    _check_batch_targets(recipe, data, batch)
    was_training = model.training
    model.eval()
    loss_fn = scoring.loss_fn if isinstance(scoring.loss_fn, ModelLoss) else _Watched(scoring.loss_fn)
    try:
        with torch.random.fork_rng(devices=[]):
            scored = scoring.step.with_loss(loss_fn).scorer(model, batch, torch.device("cpu"))(batch)
    except UserError:
        raise
    except Exception as exc:
        in_loss = isinstance(loss_fn, _Watched) and loss_fn.called
        if in_loss and isinstance(loss_fn, _Watched):  # outputs of the wrong shape are the likelier cause: say so
            _check_output_shape(recipe, data, loss_fn.outputs, loss_fn.targets)
        raise UserError(_failure(recipe, data, model, batch, exc, in_loss)) from None
    finally:
        model.train(was_training)
    outputs, targets, loss = scored.outputs, scored.targets, scored.loss
    if outputs is not None and targets is not None:
        _check_output_shape(recipe, data, outputs, targets)
    elif scoring.names:
        missing = "logits" if outputs is None else f"'{TARGETS_KEY}' in its batches"
        raise UserError(
            f"metrics {', '.join(scoring.names)} read the model's logits and the batch's targets, but the run has "
            f"no {missing}; set metrics: [] or return them"
        )
    if loss.numel() != 1:
        raise UserError(
            f"loss '{recipe.loss.name}' gives {tuple(loss.shape)} values, not one number; use reduction 'mean'"
        )
    if not math.isfinite(loss.item()):
        raise UserError(f"the loss on the first batch is already {loss.item()}: check the data and the model's outputs")


def _check_batch_targets(recipe: Recipe, data: DataBundle, batch: Batch) -> None:
    """The first batch's targets fit the task (splits held as tensors were checked whole by build_data;
    this reaches data served item by item: image folders, shards, your own)."""
    if isinstance(batch, Mapping):
        targets = batch.get(TARGETS_KEY)
    else:
        targets = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
    if isinstance(targets, torch.Tensor):
        check_targets(targets, data.task, lambda row: f"data set '{recipe.data.name}', training item {row}")


class _Watched(nn.Module):
    """The recipe's loss, noting whether it was called: a failure after that is the loss's, not the model's."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss, self.called = loss, False

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.called, self.outputs, self.targets = True, outputs, targets
        return self.loss(outputs, targets)


def _failure(recipe: Recipe, data: DataBundle, model: nn.Module, batch: Batch, exc: Exception, in_loss: bool) -> str:
    """Why the first batch failed: in the model's forward pass, or in the loss."""
    if in_loss:
        return (
            f"loss '{recipe.loss.name}' fails on the model's outputs and the targets ({describe(batch)}): "
            f"{type(exc).__name__}: {exc}"
        )
    return (
        f"model '{recipe.model.name}' does not fit the data: a batch ({describe(batch)}) from data set "
        f"'{recipe.data.name}' fails in its forward pass ({type(exc).__name__}: {exc}); "
        f"{_forward_hint(recipe, data, model, batch, exc)}"
    )


def _forward_hint(recipe: Recipe, data: DataBundle, model: nn.Module, batch: Batch, exc: Exception) -> str:
    """What to check for a forward pass that failed, from what the failure and the batch show."""
    pair = isinstance(batch, (tuple, list)) and len(batch) == 2
    inputs = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else None
    weight = next(model.parameters(), None)
    if isinstance(inputs, torch.Tensor) and inputs.is_floating_point() and weight is not None \
            and weight.is_floating_point() and inputs.dtype != weight.dtype:
        return f"its inputs are {inputs.dtype}, the model's weights {weight.dtype}: give the inputs as {weight.dtype}"
    per_position = kind_of(data.task).per_position
    if per_position and data.task.class_names and isinstance(exc, IndexError):  # ids past the end
        return (f"check the model's vocabulary: data set '{recipe.data.name}' has {len(data.task.class_names)} "
                f"tokens (set {_output_argument(recipe)}={len(data.task.class_names)}) and its context")
    if pair and recipe.loss.name == MODEL_LOSS:
        return ("with loss.name=model a batch of (inputs, targets) is given as model(inputs, targets): check that the "
                "model's forward takes the targets second, or give batches as mappings of named tensors")
    if per_position:
        return "check that the model takes token ids of shape (batch, time) and the data's context"
    return "check the model's input size (e.g. model.in_features)"


def _check_output_shape(recipe: Recipe, data: DataBundle, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    kind, names = kind_of(data.task), (recipe.model.name, recipe.data.name, _output_argument(recipe))
    problem = kind.output_problem(tuple(outputs.shape), targets, data.task, names)
    if problem is not None:
        raise UserError(problem)
    if not kind.logits_over_classes and recipe.loss.name == "bce" and (outputs.min() < 0 or outputs.max() > 1):
        raise UserError(
            f"loss.name=bce reads the model's outputs as probabilities, but on the first batch they range over "
            f"[{outputs.min().item():.3g}, {outputs.max().item():.3g}]; end the model with a sigmoid "
            "(model.output_activation=sigmoid for mlp) or use loss.name=bce_with_logits"
        )


class _Throwaway(nn.Module):
    """One parameter, for trying the optimizer and LR scheduler before the real ones take a step."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))


def dry_run_optimizer(recipe: Recipe, total_steps: int, steps: int = 2) -> None:
    """Values that fail only once training starts (scheduler.step_size=0, an optimizer argument of the
    right type but an impossible value) fail here instead, before any folder is made."""
    throwaway = _Throwaway()
    optimizer = optimizer_over(recipe, throwaway.parameters())
    scheduler = build_scheduler(recipe, optimizer, total_steps)
    for step in range(1, steps + 1):
        throwaway.weight.grad = torch.ones(1)
        for section, act in (("optimizer", optimizer.step), ("scheduler", scheduler.step if scheduler else None)):
            if act is None:
                continue
            try:
                act()
            except Exception as exc:
                name = getattr(recipe, section).name
                raise UserError(
                    f"{section}: '{name}' fails at step {step} with {getattr(recipe, section).kwargs()}: "
                    f"{type(exc).__name__}: {exc or 'no message'}"
                ) from None
        optimizer.zero_grad(set_to_none=True)

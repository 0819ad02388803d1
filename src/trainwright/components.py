"""Recipe -> components: data, model, loss, optimizer, scheduler (no devices, no Accelerate here)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainwright.data.bundle import DataBundle
from trainwright.errors import UserError
from trainwright.recipe import Recipe
from trainwright.registry import DATASETS, LOSSES, METRICS, MODELS, OPTIMIZERS, SCHEDULERS


def check_recipe(recipe: Recipe) -> None:
    """Check that every component exists and takes the arguments given (no data is read)."""
    if recipe.distributed.strategy == "fsdp":
        raise UserError(
            "distributed.strategy: 'fsdp' is not supported yet; use 'ddp' (the default) for now"
        )
    DATASETS.check(recipe.data.name, recipe.data.kwargs())
    MODELS.check(recipe.model.name, recipe.model.kwargs())
    LOSSES.check(recipe.loss.name, recipe.loss.kwargs())
    OPTIMIZERS.check(recipe.optimizer.name, recipe.optimizer.kwargs())
    SCHEDULERS.check(recipe.scheduler.name, recipe.scheduler.kwargs())
    for name in recipe.metrics or []:
        METRICS.get(name, key="metrics")


def build_data(recipe: Recipe) -> DataBundle:
    bundle = DATASETS.build(recipe.data.name, recipe.data.kwargs())
    if not isinstance(bundle, DataBundle):
        raise UserError(f"data.name: '{recipe.data.name}' returned {type(bundle).__name__}, not a DataBundle")
    return bundle


def build_model(recipe: Recipe) -> nn.Module:
    model = MODELS.build(recipe.model.name, recipe.model.kwargs())
    if not isinstance(model, nn.Module):
        raise UserError(f"model.name: '{recipe.model.name}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


def build_loss(recipe: Recipe) -> nn.Module:
    return LOSSES.build(recipe.loss.name, recipe.loss.kwargs())


def output_kind(recipe: Recipe, bundle: DataBundle) -> str:
    """What the model outputs: 'probability', 'logits' or 'value' (from the loss; imported losses: by task)."""
    default = "value" if bundle.task.kind == "regression" else "logits"
    return LOSSES.meta(recipe.loss.name).get("output", default)


def metric_names(recipe: Recipe, bundle: DataBundle) -> list[str]:
    """The recipe's metrics, or the task's default (accuracy for classifiers, MAE for regression)."""
    from trainwright.metrics import default_metrics

    return list(recipe.metrics) if recipe.metrics else default_metrics(bundle.task)


def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    return OPTIMIZERS.build(recipe.optimizer.name, recipe.optimizer.kwargs(), params=model.parameters(), lr=recipe.optimizer.lr)


def build_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer, total_steps: int) -> Any | None:
    return SCHEDULERS.build(recipe.scheduler.name, recipe.scheduler.kwargs(), optimizer=optimizer, total_steps=total_steps)

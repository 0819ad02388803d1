"""Which parameters train, and how: `model.freeze`, `optimizer.groups` and `optimizer.no_decay`.

Patterns are shell-style globs (`fnmatch`, case-sensitive) over the names of `model.named_parameters()`;
`*` also crosses dots, so `encoder.*` is every parameter under `encoder`. A tied parameter answers to each
of its names. Applied to the built model before it is wrapped for DDP or sharded by FSDP (whose wrappers
keep these names)."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from trainwright.errors import UserError, did_you_mean
from trainwright.recipe import OptimizerConfig

DEFAULT_GROUP = "default"
NO_DECAY = ".no_decay"  # the suffix of a group's part without weight decay (optimizer.no_decay)


def parameter_names(model: nn.Module) -> dict[nn.Parameter, list[str]]:
    """Every parameter of the model with all its names (a tied parameter has several), in model order."""
    names: dict[nn.Parameter, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(param, []).append(name)
    return names


def matched(pattern: str, names: dict[nn.Parameter, list[str]], key: str) -> list[nn.Parameter]:
    """The parameters one of whose names `pattern` matches; one that matches none is a UserError naming `key`."""
    found = [param for param, aliases in names.items() if any(fnmatchcase(name, pattern) for name in aliases)]
    if not found:
        every = [name for aliases in names.values() for name in aliases]
        shown = ", ".join(every[:12]) + (f", ... ({len(every)} in all)" if len(every) > 12 else "")
        raise UserError(
            f"{key}: '{pattern}' matches no parameter of the model{did_you_mean(pattern, every)} (patterns are "
            f"shell-style globs over parameter names, '*' for any text; its parameters: {shown})"
        )
    return found


def freeze(model: nn.Module, patterns: Iterable[str] | None) -> None:
    """Stop the parameters matched by `patterns` (model.freeze) from training."""
    if not patterns:
        return
    names = parameter_names(model)
    for pattern in patterns:
        for param in matched(pattern, names, "model.freeze"):
            param.requires_grad_(False)
    if not any(param.requires_grad for param in names):
        raise UserError("model.freeze: every parameter of the model is frozen, so nothing would train")


def optimizer_groups(config: OptimizerConfig, model: nn.Module) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: the parameters that train and no group claims ('default', first),
    then each of optimizer.groups in order with its own lr/weight_decay. With optimizer.no_decay every
    group's biases, norm weights (parameters of fewer than 2 dimensions) and embedding tables move to a
    part of their own, '<group>.no_decay', with weight_decay 0. Empty groups are left out. Frozen
    parameters are in none. Without groups and no_decay: one group, unnamed (as a plain parameter list
    makes it, so that checkpoints are as before)."""
    names = {param: aliases for param, aliases in parameter_names(model).items() if param.requires_grad}
    claimed: dict[nn.Parameter, int] = {}
    for index, group in enumerate(config.groups or []):
        key = f"optimizer.groups[{index}].params"
        for pattern in group.params:
            for param in matched(pattern, names, key):
                if claimed.get(param, index) != index:
                    raise UserError(
                        f"{key}: '{pattern}' matches {names[param][0]}, which optimizer.groups[{claimed[param]}] "
                        "already holds; a parameter belongs to one group (narrow one of the patterns)"
                    )
                claimed[param] = index
    groups: list[dict[str, Any]] = [{"name": DEFAULT_GROUP, "params": [p for p in names if p not in claimed]}]
    for index, group in enumerate(config.groups or []):
        settings = {k: v for k, v in (("lr", group.lr), ("weight_decay", group.weight_decay)) if v is not None}
        name = group.name or f"group{index}"
        groups.append({"name": name, "params": [p for p in names if claimed.get(p) == index], **settings})
    if config.no_decay:
        groups = [part for group in groups for part in _split_decay(group, _embedding_tables(model))]
    elif not config.groups:
        return [{"params": groups[0]["params"]}]
    return [group for group in groups if group["params"]]


def _embedding_tables(model: nn.Module) -> set[torch.Tensor]:
    return {module.weight for module in model.modules() if isinstance(module, nn.Embedding)}


def _split_decay(group: dict[str, Any], embeddings: set[torch.Tensor]) -> list[dict[str, Any]]:
    spared = [p for p in group["params"] if p.dim() < 2 or p in embeddings]
    decayed = [p for p in group["params"] if not (p.dim() < 2 or p in embeddings)]
    return [
        {**group, "params": decayed},
        {**group, "name": group["name"] + NO_DECAY, "params": spared, "weight_decay": 0.0},
    ]


def check_weight_decay(config: OptimizerConfig, optimizer: Any) -> None:
    """Per-group weight decay needs an optimizer that takes `weight_decay` (else it would be ignored)."""
    sets_decay = config.no_decay or any(group.weight_decay is not None for group in config.groups or [])
    if not sets_decay:
        return
    try:
        params = inspect.signature(optimizer).parameters
    except (TypeError, ValueError):
        return
    if "weight_decay" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        key = "optimizer.no_decay" if config.no_decay else "optimizer.groups[].weight_decay"
        raise UserError(
            f"{key}: optimizer '{config.name}' takes no weight_decay, so there is no decay to set per group"
        )


def logged_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """`lr`: the first group's learning rate (the default group's, when any parameter falls to it); with
    optimizer.groups also `lr/<name>` for each named group."""
    groups = optimizer.param_groups
    values = {"lr": groups[0]["lr"]}
    for group in groups:
        name = str(group.get("name", DEFAULT_GROUP)).removesuffix(NO_DECAY)
        if name != DEFAULT_GROUP:
            values.setdefault(f"lr/{name}", group["lr"])
    return values

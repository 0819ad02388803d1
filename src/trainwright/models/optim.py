"""Built-in optimizers and LR schedulers (stepped once per optimizer step).

Every schedule takes `warmup_steps`: the LR rises linearly from lr/warmup_steps to lr over that many steps
first. The built-in shapes are closed forms of the step number (LambdaLR), so a resumed run's LRs are those
of an uninterrupted run; a torch.optim.lr_scheduler class (by name or import path) runs after the warm-up."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import lr_scheduler

from trainwright.errors import UserError
from trainwright.registry import OPTIMIZERS, SCHEDULERS

OPTIMIZERS.register("sgd")(torch.optim.SGD)
OPTIMIZERS.register("adam")(torch.optim.Adam)
OPTIMIZERS.register("adamw")(torch.optim.AdamW)
OPTIMIZERS.register("rmsprop")(torch.optim.RMSprop)

Factor = Callable[[int], float]


@SCHEDULERS.register("none")
def constant(optimizer: torch.optim.Optimizer, total_steps: int) -> None:
    """No schedule: the learning rate stays at optimizer.lr."""


def warmup(factor: Factor, warmup_steps: int) -> Factor:
    """`factor` (of the steps after the warm-up) preceded by a linear warm-up from 1/warmup_steps to 1."""
    if warmup_steps == 0:
        return factor
    return lambda step: (
        1 / warmup_steps + (1 - 1 / warmup_steps) * step / warmup_steps if step < warmup_steps
        else factor(step - warmup_steps)
    )


def _decay_steps(warmup_steps: int, total_steps: int) -> int:
    """The steps after the warm-up (at least 1: a warm-up as long as the run leaves it at the full LR)."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be 0 or more, got {warmup_steps}")
    return max(1, total_steps - warmup_steps)


def _decay(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr: float,
    shape: Callable[[float], float],
) -> lr_scheduler.LambdaLR:
    """Each group's LR from its lr (after the warm-up) to `min_lr` at the run's last step, `shape` giving the
    remaining share (1 at the start, 0 at the end) of the progress through the decay (0 to 1)."""
    decay_steps = _decay_steps(warmup_steps, total_steps)
    if min_lr < 0:
        raise ValueError(f"min_lr must be 0 or more, got {min_lr}")

    def group_factor(lr: float) -> Factor:
        floor = min_lr / lr
        return warmup(lambda step: floor + (1 - floor) * shape(min(step / decay_steps, 1.0)), warmup_steps)

    return lr_scheduler.LambdaLR(optimizer, [group_factor(group["lr"]) for group in optimizer.param_groups])


def after_warmup(
    optimizer: torch.optim.Optimizer, scheduler: lr_scheduler.LRScheduler, warmup_steps: int
) -> lr_scheduler.LRScheduler:
    """`scheduler` preceded by a linear warm-up over `warmup_steps` (torch's LinearLR, then SequentialLR)."""
    if warmup_steps == 0:
        return scheduler
    warm = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup_steps, total_iters=warmup_steps)
    return lr_scheduler.SequentialLR(optimizer, [warm, scheduler], milestones=[warmup_steps])


@SCHEDULERS.register("step")
def step(
    optimizer: torch.optim.Optimizer, total_steps: int, step_size: int, gamma: float = 0.1, warmup_steps: int = 0
) -> lr_scheduler.LRScheduler:
    """Multiply the LR by `gamma` every `step_size` optimizer steps (counted after the warm-up)."""
    _decay_steps(warmup_steps, total_steps)
    return after_warmup(optimizer, lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma), warmup_steps)


@SCHEDULERS.register("cosine")
def cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0
) -> lr_scheduler.LRScheduler:
    """Linear warm-up for `warmup_steps`, then cosine decay to `min_lr` at the last step of the run."""
    decay = lr_scheduler.CosineAnnealingLR(optimizer, T_max=_decay_steps(warmup_steps, total_steps), eta_min=min_lr)
    return after_warmup(optimizer, decay, warmup_steps)


@SCHEDULERS.register("linear")
def linear(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0
) -> lr_scheduler.LambdaLR:
    """Linear warm-up for `warmup_steps`, then linear decay to `min_lr` at the last step of the run."""
    return _decay(optimizer, total_steps, warmup_steps, min_lr, lambda progress: 1 - progress)


@SCHEDULERS.register("polynomial")
def polynomial(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0, power: float = 1.0
) -> lr_scheduler.LambdaLR:
    """Linear warm-up, then decay to `min_lr` as (1 - progress) ** `power` (1: linear, 2: quadratic)."""
    if power <= 0:
        raise ValueError(f"power must be above 0, got {power}")
    return _decay(optimizer, total_steps, warmup_steps, min_lr, lambda progress: (1 - progress) ** power)


@SCHEDULERS.register("constant")
def constant_with_warmup(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0
) -> lr_scheduler.LambdaLR:
    """Linear warm-up for `warmup_steps`, then the LR stays at optimizer.lr."""
    _decay_steps(warmup_steps, total_steps)
    return lr_scheduler.LambdaLR(optimizer, warmup(lambda step: 1.0, warmup_steps))


@SCHEDULERS.register("one_cycle")
def one_cycle(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int | None = None, div_factor: float = 25.0,
    final_div_factor: float = 1e4, anneal: typing.Literal["cos", "linear"] = "cos", cycle_momentum: bool = False,
) -> lr_scheduler.OneCycleLR:
    """torch's OneCycleLR over the run, peaking at optimizer.lr: from lr/`div_factor` up over `warmup_steps`
    (default 30% of the run), then down to lr/(div_factor*final_div_factor) for the run's last step."""
    warm = round(0.3 * total_steps) if warmup_steps is None else warmup_steps
    if not 0 < warm < total_steps - 1:
        raise ValueError(f"warmup_steps must be between 1 and the run's steps less 2 ({total_steps - 2}), got {warm}")
    return lr_scheduler.OneCycleLR(  # its first phase ends at step pct_start * total_steps - 1
        optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=total_steps,
        pct_start=(warm + 1) / total_steps, anneal_strategy=anneal, div_factor=div_factor,
        final_div_factor=final_div_factor, cycle_momentum=cycle_momentum,
    )


# --- torch.optim.lr_scheduler classes -------------------------------------------------------------------

_SET_BY_TRAINWRIGHT = ("self", "optimizer", "last_epoch", "verbose", "total_steps")
# Classes that need Python objects (functions, other schedulers) or a validation metric to step.
_NOT_FROM_A_RECIPE = {"LambdaLR", "MultiplicativeLR", "SequentialLR", "ChainedScheduler", "ReduceLROnPlateau"}


def torch_scheduler(cls: type) -> Callable[..., Any]:
    """A builder for an LR scheduler class that takes (optimizer, **arguments): after `warmup_steps` (0) of
    linear warm-up it runs with the recipe's arguments (a class taking `total_steps` gets the steps after
    the warm-up)."""
    if cls.__name__ in _NOT_FROM_A_RECIPE:
        raise UserError(
            f"scheduler.name: {cls.__name__} cannot be built from a recipe (it "
            + ("steps on a validation metric, and trainwright steps its scheduler after every optimizer step"
               if cls.__name__ == "ReduceLROnPlateau" else "takes functions or other schedulers")
            + "); choose another, e.g. cosine, linear or a function of your own taking (optimizer, total_steps)"
        )
    own = inspect.signature(cls).parameters
    takes_total = "total_steps" in own
    set_here = (*_SET_BY_TRAINWRIGHT, "epochs", "steps_per_epoch") if takes_total else _SET_BY_TRAINWRIGHT  # OneCycleLR

    def build(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, **arguments: Any) -> Any:
        after_steps = _decay_steps(warmup_steps, total_steps)
        if takes_total:
            arguments["total_steps"] = after_steps
        return after_warmup(optimizer, cls(optimizer, **arguments), warmup_steps)

    keyword = inspect.Parameter.KEYWORD_ONLY
    build.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter("optimizer", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("total_steps", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("warmup_steps", keyword, default=0, annotation=int),
        *(p.replace(kind=keyword) for name, p in own.items() if name not in set_here),
    ])
    try:
        # (mypy calls __init__ read off an instance unsound; `cls` is a class)
        hints = typing.get_type_hints(cls.__init__)  # type: ignore[misc]
    except Exception:  # annotations that cannot be resolved here: the class checks its own arguments
        hints = {}
    build.__annotations__ = {**{k: v for k, v in hints.items() if k not in set_here}, "warmup_steps": int}
    build.__doc__ = f"torch's {cls.__name__} after an optional linear warm-up."
    return build


def adapt_scheduler(builder: Callable[..., Any]) -> Callable[..., Any]:
    """An imported scheduler: an LR scheduler class becomes a builder (torch_scheduler); a function is used
    as it is."""
    if isinstance(builder, type) and issubclass(builder, lr_scheduler.LRScheduler):
        return torch_scheduler(builder)
    return builder


SCHEDULERS.adapt = adapt_scheduler
for _name, _cls in vars(lr_scheduler).items():
    if (isinstance(_cls, type) and issubclass(_cls, lr_scheduler.LRScheduler) and _name[0] != "_"
            and _name not in _NOT_FROM_A_RECIPE and _name != "LRScheduler"):
        SCHEDULERS.register(_name)(torch_scheduler(_cls))

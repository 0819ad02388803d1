"""Built-in optimizers and LR schedulers (stepped once per optimizer step)."""

from __future__ import annotations

import torch
from torch.optim import lr_scheduler

from trainwright.registry import OPTIMIZERS, SCHEDULERS

OPTIMIZERS.register("sgd")(torch.optim.SGD)
OPTIMIZERS.register("adam")(torch.optim.Adam)
OPTIMIZERS.register("adamw")(torch.optim.AdamW)
OPTIMIZERS.register("rmsprop")(torch.optim.RMSprop)


@SCHEDULERS.register("none")
def constant(optimizer: torch.optim.Optimizer, total_steps: int) -> None:
    """No schedule: the learning rate stays at optimizer.lr."""
    return None


@SCHEDULERS.register("step")
def step(optimizer: torch.optim.Optimizer, total_steps: int, step_size: int, gamma: float = 0.1) -> lr_scheduler.StepLR:
    """Multiply the LR by `gamma` every `step_size` optimizer steps."""
    return lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


@SCHEDULERS.register("cosine")
def cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0
) -> lr_scheduler.LRScheduler:
    """Linear warm-up for `warmup_steps`, then cosine decay to `min_lr` at the last step of the run."""
    decay = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps), eta_min=min_lr)
    if warmup_steps == 0:
        return decay
    warmup = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup_steps, total_iters=warmup_steps)
    return lr_scheduler.SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])

"""How the processes share the model: one strategy object per run, chosen from `Processes.strategy`
(training.strategy_for).

- ddp (`DataParallel`): every process holds the whole model; Accelerate wraps it (DistributedDataParallel
  with several processes) and all-reduces the gradients.
- fsdp (`trainwright.distributed.fsdp.FullySharded`): every process holds a shard of the parameters, gradients and
  optimizer state; training/start.py imports it only for runs that use it (torch's FSDP and checkpoint
  packages take a second to import).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

import torch
from accelerate import Accelerator
from torch import nn

from trainwright.errors import UserError, did_you_mean

BuildOptimizer = Callable[[nn.Module], torch.optim.Optimizer]
_SYNC = contextlib.nullcontext()  # gradients are reduced as usual


class Strategy(Protocol):
    def prepare(self, model: nn.Module, build_optimizer: BuildOptimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The model ready for training and its optimizer (built on the parameters the strategy trains)."""

    def gradient_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[None]:
        """Reduce gradients across processes in this backward pass only when `enabled` (the last
        micro-batch of an accumulation group); the others accumulate locally."""

    def full_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The whole model's state dict on the main process (every process calls it)."""


class DataParallel:
    """Each process a whole copy; Accelerate prepares model and optimizer."""

    def __init__(self, accelerator: Accelerator, compile_mode: str | None, recompute: list[str] | None = None) -> None:
        self.accelerator, self.compile_mode, self.recompute = accelerator, compile_mode, recompute

    def prepare(self, model: nn.Module, build_optimizer: BuildOptimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        checkpoint_activations(model, self.recompute)
        compile_in_place(model, self.compile_mode)
        return self.accelerator.prepare(model, build_optimizer(model))

    def gradient_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[None]:
        return _SYNC if enabled else self.accelerator.no_sync(model)

    def full_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return self.accelerator.unwrap_model(model).state_dict()


def checkpoint_activations(model: nn.Module, names: list[str] | None) -> None:
    """Wrap every module of the classes `names` (distributed.activation_checkpointing) in torch's
    non-reentrant checkpoint wrapper: its activations are recomputed in backward instead of kept. The
    wrapper leaves the names in the state dict as they are (checkpoints with and without it are alike)."""
    if not names:
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    chosen = set(module_classes(model, names, "distributed.activation_checkpointing"))
    apply_activation_checkpointing(model, check_fn=lambda module: type(module).__name__ in chosen)


def module_classes(model: nn.Module, names: list[str], key: str) -> list[str]:
    """`names`, each the class name of a module inside the model (not the model itself), or a UserError naming `key`."""
    present = {type(m).__name__ for m in model.modules() if m is not model}
    for name in names:
        if name not in present:
            raise UserError(
                f"{key}: the model has no module of class '{name}'{did_you_mean(name, present)} "
                f"(its classes: {', '.join(sorted(present))})"
            )
    return names


def compile_in_place(model: nn.Module, mode: str | None) -> None:
    """`torch.compile` the model's forward in place (`nn.Module.compile`), so that its class and the names
    in its state dict stay as they are (checkpoints of compiled and plain runs are alike)."""
    if mode is not None:
        model.compile(mode=mode)

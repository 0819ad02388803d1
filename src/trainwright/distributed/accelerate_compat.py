"""Workarounds for Accelerate's internals and defaults, in one place. `tests/test_accelerate_compat.py` fails loudly
when a name patched here disappears from Accelerate (pyproject.toml pins the tested minor version)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trainwright.distributed.launcher import FSDP_VARIABLE

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

# What this module relies on in Accelerate: module path -> attribute names.
PATCHED = {
    "accelerate.utils.imports": ("is_lomo_available",),
    "accelerate.optimizer": ("is_lomo_available", "AcceleratedOptimizer"),
    "accelerate.accelerator": ("is_lomo_available",),
    "accelerate.state": ("AcceleratorState",),
}
_PLAIN_TYPES = ("NO", "MULTI_CPU", "MULTI_GPU")  # distributed types whose step calls are the plain ones


@dataclass(frozen=True)
class StepCalls:
    """The calls of one optimizer step."""

    backward: Callable[[torch.Tensor], None]
    step: Callable[[], None]
    zero_grad: Callable[[], None]


def step_calls(accelerator: Accelerator, optimizer: AcceleratedOptimizer) -> StepCalls:
    """Accelerate's backward/step/zero_grad, or the plain torch calls they end in where that is all they
    do: without a gradient scaler (fp16), on CPU/GPU processes, with Accelerate's own gradient accumulation
    off, `accelerator.backward` is `loss.backward()` after a division by 1, and the optimizer wrapper's
    `step`/`zero_grad` call the torch optimizer's after per-step checks (an XLA environment-variable parse,
    `inspect.signature`) that cost as much as a tiny model's whole step. `optimizer` was prepared by the
    accelerator."""
    plain = (
        accelerator.scaler is None
        and accelerator.distributed_type.name in _PLAIN_TYPES
        and accelerator.gradient_accumulation_steps == 1
    )
    if not plain:
        return StepCalls(accelerator.backward, optimizer.step, functools.partial(optimizer.zero_grad, set_to_none=True))
    torch_optimizer = optimizer.optimizer
    return StepCalls(
        lambda loss: loss.backward(),
        torch_optimizer.step,
        functools.partial(torch_optimizer.zero_grad, set_to_none=True),
    )


def cache_lomo_probe() -> None:
    """Accelerate's optimizer wrapper asks `is_lomo_available()` (an uncached importlib search of
    sys.path) twice per optimizer step: ~1.6 ms a step here, as much as a small model's whole step.
    Whether a package is installed cannot change during a run, so answer it once."""
    import accelerate.accelerator
    import accelerate.optimizer
    import accelerate.utils.imports

    probe = functools.cache(accelerate.utils.imports.is_lomo_available)
    accelerate.optimizer.is_lomo_available = probe
    accelerate.accelerator.is_lomo_available = probe


def keep_accelerate_fsdp_off() -> None:
    """trainwright applies FSDP2 itself (fsdp.py) and passes only the optimizer through `prepare`;
    Accelerate's own FSDP mode (switched on by an FSDP launcher config, on GPUs) expects to wrap the
    model and changes backward and clipping. The strategy was read from the launcher already
    (launcher.resolve_strategy), so Accelerate is told nothing of it."""
    os.environ.pop(FSDP_VARIABLE, None)


def forget_accelerator_state() -> None:
    """Accelerate keeps its settings (precision, device) in a process-wide singleton, so a second
    Accelerator with another precision in the same process is refused. Tests and benchmarks that train
    several precisions in one process call this between runs; the process group (kept in
    PartialState) stays. Training from the CLI never needs it: one run per process."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()

"""Workarounds for Accelerate's internals and defaults, in one place. `tests/test_accelerate_compat.py` fails loudly
when a name patched here disappears from Accelerate (pyproject.toml pins the tested minor version)."""

from __future__ import annotations

import functools
import os

from trainwright.launcher import FSDP_VARIABLE

# What this module touches in Accelerate: module path -> attribute names.
PATCHED = {
    "accelerate.utils.imports": ("is_lomo_available",),
    "accelerate.optimizer": ("is_lomo_available",),
    "accelerate.accelerator": ("is_lomo_available",),
    "accelerate.state": ("AcceleratorState",),
}


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

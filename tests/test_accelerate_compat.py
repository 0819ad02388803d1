"""The Accelerate internals trainwright patches still exist (a new Accelerate must fail here, loudly)."""

from __future__ import annotations

import importlib

import pytest

from trainwright.accelerate_compat import PATCHED


@pytest.mark.parametrize("module_name", sorted(PATCHED))
def test_patched_names_exist_in_accelerate(module_name):
    module = importlib.import_module(module_name)
    for name in PATCHED[module_name]:
        assert hasattr(module, name), f"Accelerate no longer has {module_name}.{name}; update accelerate_compat.py"


def test_accelerator_state_can_still_be_reset():
    from accelerate.state import AcceleratorState

    assert callable(getattr(AcceleratorState, "_reset_state", None)), "AcceleratorState._reset_state is gone"

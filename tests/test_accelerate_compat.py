"""The Accelerate internals trainwright patches still exist (a new Accelerate must fail here, loudly)."""

from __future__ import annotations

import importlib

import pytest

from trainwright.distributed.accelerate_compat import PATCHED


@pytest.mark.parametrize("module_name", sorted(PATCHED))
def test_patched_names_exist_in_accelerate(module_name):
    module = importlib.import_module(module_name)
    for name in PATCHED[module_name]:
        assert hasattr(module, name), f"Accelerate no longer has {module_name}.{name}; update accelerate_compat.py"


def test_accelerator_state_can_still_be_reset():
    from accelerate.state import AcceleratorState

    assert callable(getattr(AcceleratorState, "_reset_state", None)), "AcceleratorState._reset_state is gone"


def test_plain_step_calls_train_exactly_like_accelerates_own():
    """step_calls skips Accelerate's wrappers only where they end in the same torch calls: three steps
    both ways give bitwise-equal weights (fails if a new Accelerate does more in backward/step/zero_grad)."""
    import torch
    from accelerate import Accelerator

    from trainwright.distributed.accelerate_compat import StepCalls, forget_accelerator_state, step_calls

    def three_steps(fast: bool) -> list[torch.Tensor]:
        forget_accelerator_state()
        accelerator = Accelerator(cpu=True)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=0.1))
        calls = step_calls(accelerator, optimizer) if fast else StepCalls(
            accelerator.backward, optimizer.step, lambda: optimizer.zero_grad(set_to_none=True)
        )
        assert (calls.step == optimizer.optimizer.step) is fast
        generator = torch.Generator().manual_seed(1)
        for _ in range(3):
            calls.backward(model(torch.randn(4, 3, generator=generator)).pow(2).mean())
            calls.step()
            calls.zero_grad()
            assert all(p.grad is None for p in model.parameters())
        return [p.detach().clone() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(three_steps(True), three_steps(False)))

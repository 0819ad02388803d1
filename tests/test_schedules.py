"""LR schedules: linear, polynomial, constant with warm-up, one-cycle and torch.optim.lr_scheduler classes (by
name or import path), each with a warm-up; their LRs follow the documented formulas and a schedule saved
and loaded as a checkpoint does (JSON) goes on with bitwise the same LRs as an uninterrupted one."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from conftest import REPO
from trainwright.components import SCHEDULERS, build_scheduler
from trainwright.errors import UserError
from trainwright.recipe import load_recipe

HEART = REPO / "recipes" / "heart.yaml"
LR, TOTAL, WARMUP = 0.01, 40, 8


def _recipe(*overrides: str):
    return load_recipe(HEART, ["optimizer.name=adamw", f"optimizer.lr={LR}", *overrides])


def _objects(recipe, total: int = TOTAL):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.optimizer.lr)
    return model, optimizer, build_scheduler(recipe, optimizer, total)


def _step(model, optimizer, scheduler) -> float:
    model.weight.grad = torch.ones_like(model.weight)
    optimizer.step()
    scheduler.step()
    return optimizer.param_groups[0]["lr"]


def lrs(*overrides: str, total: int = TOTAL) -> list[float]:
    """The LR after each of `total` optimizer steps (as metrics.jsonl logs it: index 0 is after step 1)."""
    model, optimizer, scheduler = _objects(_recipe(*overrides), total)
    return [_step(model, optimizer, scheduler) for _ in range(total)]


def warm(step: int) -> float:
    """The LR after `step` steps of the warm-up (from LR/WARMUP up to LR at step WARMUP)."""
    return LR * (1 / WARMUP + (1 - 1 / WARMUP) * step / WARMUP)


def test_linear_decays_to_min_lr_at_the_last_step():
    got = lrs("scheduler.name=linear", f"scheduler.warmup_steps={WARMUP}", "scheduler.min_lr=0.001")
    for step, value in enumerate(got, start=1):
        expected = warm(step) if step < WARMUP else 0.001 + (LR - 0.001) * (1 - (step - WARMUP) / (TOTAL - WARMUP))
        assert value == pytest.approx(expected, rel=1e-9), step
    assert got[WARMUP - 1] == pytest.approx(LR) and got[-1] == pytest.approx(0.001)


def test_polynomial_decays_by_its_power():
    got = lrs("scheduler.name=polynomial", f"scheduler.warmup_steps={WARMUP}", "scheduler.power=2.0")
    for step, value in enumerate(got, start=1):
        expected = warm(step) if step < WARMUP else LR * (1 - (step - WARMUP) / (TOTAL - WARMUP)) ** 2
        assert value == pytest.approx(expected, rel=1e-9, abs=1e-15), step


def test_constant_with_warmup():
    got = lrs("scheduler.name=constant", f"scheduler.warmup_steps={WARMUP}")
    assert got[:WARMUP - 1] == pytest.approx([warm(s) for s in range(1, WARMUP)], rel=1e-9)
    assert got[WARMUP - 1:] == [LR] * (TOTAL - WARMUP + 1)


def test_one_cycle_peaks_at_the_optimizers_lr_at_the_end_of_its_warmup():
    got = lrs("scheduler.name=one_cycle", f"scheduler.warmup_steps={WARMUP}")
    assert max(got) == pytest.approx(LR) and got.index(max(got)) == WARMUP - 1  # the LR after WARMUP steps
    _, optimizer, _ = _objects(_recipe("scheduler.name=one_cycle", f"scheduler.warmup_steps={WARMUP}"))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(LR / 25)  # the first step's
    assert got[-2] == pytest.approx(LR / 25 / 1e4)  # the last step's
    default = lrs("scheduler.name=one_cycle")
    assert default.index(max(default)) == round(0.3 * TOTAL) - 1  # default: 30% warm-up


@pytest.mark.parametrize("name", ["ExponentialLR", "torch.optim.lr_scheduler:ExponentialLR"])
def test_a_torch_scheduler_by_name_or_import_path_runs_after_the_warmup(name):
    got = lrs(f"scheduler.name={name}", "scheduler.gamma=0.9", f"scheduler.warmup_steps={WARMUP}")
    for step, value in enumerate(got, start=1):
        expected = warm(step) if step < WARMUP else LR * 0.9 ** (step - WARMUP)
        assert value == pytest.approx(expected, rel=1e-9), step
    assert lrs(f"scheduler.name={name}", "scheduler.gamma=0.9")[:3] == pytest.approx([LR * 0.9 ** s for s in (1, 2, 3)])


def test_a_torch_scheduler_taking_total_steps_gets_those_after_the_warmup():
    got = lrs("scheduler.name=OneCycleLR", "scheduler.max_lr=0.02", f"scheduler.warmup_steps={WARMUP}",
              "scheduler.cycle_momentum=false")
    assert max(got[WARMUP:]) == pytest.approx(0.02, rel=1e-2)
    assert got[-2] == pytest.approx(0.02 / 25 / 1e4)  # its cycle ends with the run's last step


def test_schedules_that_cannot_run_are_one_message_naming_the_key():
    with pytest.raises(UserError, match=r"scheduler.gama: unknown argument .*did you mean 'gamma'"):
        SCHEDULERS.check("ExponentialLR", {"gama": 0.9})
    with pytest.raises(UserError, match="ReduceLROnPlateau cannot be built from a recipe"):
        SCHEDULERS.check("torch.optim.lr_scheduler:ReduceLROnPlateau", {})
    with pytest.raises(UserError, match=r"warmup_steps must be 0 or more, got -1"):
        _objects(_recipe("scheduler.name=linear", "scheduler.warmup_steps=-1"))
    with pytest.raises(UserError, match=r"warmup_steps must be between 1 and the run's steps less 2 \(38\), got 39"):
        _objects(_recipe("scheduler.name=one_cycle", "scheduler.warmup_steps=39"))


def test_a_warmup_as_long_as_the_run_only_warms_up():
    for name in ("linear", "constant", "cosine", "ExponentialLR"):
        extra = ["scheduler.gamma=0.5"] if name == "ExponentialLR" else []
        got = lrs(f"scheduler.name={name}", "scheduler.warmup_steps=50", *extra)
        expected = [LR * (1 / 50 + (1 - 1 / 50) * s / 50) for s in range(1, TOTAL + 1)]
        assert got == pytest.approx(expected, rel=1e-9), name


RESUMABLE = {
    "linear": ["scheduler.name=linear", f"scheduler.warmup_steps={WARMUP}", "scheduler.min_lr=1e-4"],
    "polynomial": ["scheduler.name=polynomial", f"scheduler.warmup_steps={WARMUP}", "scheduler.power=3.0"],
    "constant": ["scheduler.name=constant", f"scheduler.warmup_steps={WARMUP}"],
    "one_cycle": ["scheduler.name=one_cycle", f"scheduler.warmup_steps={WARMUP}"],
    "step": ["scheduler.name=step", "scheduler.step_size=5", "scheduler.gamma=0.7", f"scheduler.warmup_steps={WARMUP}"],
    "cosine": ["scheduler.name=cosine", f"scheduler.warmup_steps={WARMUP}"],
    "torch_class": ["scheduler.name=torch.optim.lr_scheduler:ExponentialLR", "scheduler.gamma=0.93",
                    f"scheduler.warmup_steps={WARMUP}"],
    "torch_cyclic": ["scheduler.name=CyclicLR", "scheduler.base_lr=0.001", "scheduler.max_lr=0.01",
                     "scheduler.step_size_up=7", "scheduler.cycle_momentum=false", f"scheduler.warmup_steps={WARMUP}"],
}


@pytest.mark.parametrize("name", sorted(RESUMABLE))
@pytest.mark.parametrize("stopped_at", [WARMUP - 3, WARMUP, 23])
def test_a_resumed_schedule_gives_bitwise_the_same_lrs(name, stopped_at):
    """As a checkpoint does: the scheduler's state_dict through JSON and the optimizer's state_dict, loaded
    into ones built afresh from the recipe."""
    recipe = _recipe(*RESUMABLE[name])
    uninterrupted = lrs(*RESUMABLE[name])
    model, optimizer, scheduler = _objects(recipe)
    before = [_step(model, optimizer, scheduler) for _ in range(stopped_at)]
    saved_scheduler = json.loads(json.dumps(scheduler.state_dict()))
    saved_optimizer, saved_model = copy.deepcopy(optimizer.state_dict()), copy.deepcopy(model.state_dict())
    model, optimizer, scheduler = _objects(recipe)
    model.load_state_dict(saved_model)
    optimizer.load_state_dict(saved_optimizer)
    scheduler.load_state_dict(saved_scheduler)
    after = [_step(model, optimizer, scheduler) for _ in range(TOTAL - stopped_at)]
    assert before + after == uninterrupted  # bitwise
    assert all(math.isfinite(v) and v >= 0 for v in uninterrupted) and len(set(uninterrupted)) > 2

"""`trainwright lr-find`: the learning-rate range test (Leslie Smith; fastai's lr_find, Lightning's
Tuner.lr_find). A throwaway copy of the recipe's model trains for N optimizer steps while the learning
rate rises exponentially from a start to an end value; the smoothed loss against the learning rate
shows where training learns and where it breaks down; the suggestion is a tenth of the learning rate at
which the smoothed loss is lowest (the README says why this rule).
Nothing is saved: no run dir, no checkpoint, no tracker; only the plot the user asked for."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from trainwright.components import adapt_model, build_data, build_model, build_optimizer, build_scoring
from trainwright.data.loading import TrainBatches, peek, resolve_workers, steps_per_epoch
from trainwright.distributed.accelerate_compat import step_calls
from trainwright.distributed.launcher import resolve_precision
from trainwright.distributed.processes import Processes
from trainwright.errors import UserError
from trainwright.recipe import Recipe
from trainwright.run.files import check_new_output
from trainwright.step import Step
from trainwright.training.preflight import check_first_batch, check_loss_fits_task, dry_run_optimizer
from trainwright.training.start import make_accelerator

SMOOTHING = 0.9  # the weight of the running average of the loss (see the README: fastai and Lightning use 0.98)
DIVERGED = 4.0  # stop once the smoothed loss exceeds this many times its lowest value (Lightning's threshold)
MIN_STEPS = 20
MAX_STEPS = 100_000


@dataclass(frozen=True)
class RangeTest:
    """The learning rates tried (one per optimizer step), the loss at each and its smoothed value, why the
    test stopped before its last step (None: it did not), and the index of the lowest smoothed loss that
    the suggestion is taken from (None: the loss did not fall)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    stopped: str | None
    lowest: int | None

    @property
    def suggestion(self) -> float | None:
        """The suggested learning rate: a tenth of the one at the lowest smoothed loss."""
        return None if self.lowest is None else self.lrs[self.lowest] / 10


def check_options(min_lr: float, max_lr: float, steps: int) -> None:
    if not 0 < min_lr < max_lr or not math.isfinite(max_lr):
        raise UserError(f"--min-lr {min_lr:g} and --max-lr {max_lr:g}: give 0 < --min-lr < --max-lr")
    if steps < MIN_STEPS:
        raise UserError(f"--steps {steps}: the range test needs at least {MIN_STEPS} steps to suggest a learning rate")
    if steps > MAX_STEPS:  # (its learning rates are made up front, one per step)
        raise UserError(f"--steps {steps:,}: the range test takes at most {MAX_STEPS:,} steps")


def check_single_process() -> None:
    """The test trains one copy of the model in one process; under a launcher every process would train its own."""
    world_size = os.environ.get("WORLD_SIZE", "1")
    if world_size.isdigit() and int(world_size) > 1:
        raise UserError(
            f"lr-find runs in one process, but it was launched as {world_size} processes: run "
            "`trainwright lr-find ...` without accelerate launch or torchrun (its suggestion is for the recipe's "
            "global batch, which is the same on any number of processes)"
        )


def exponential_lrs(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """`steps` learning rates from min_lr to max_lr, each the same factor above the one before."""
    return np.geomspace(min_lr, max_lr, steps).tolist()


def lr_range_test(recipe: Recipe, min_lr: float, max_lr: float, steps: int) -> RangeTest:
    """Train a fresh copy of the recipe's model (seeded as `train` seeds it) for `steps` optimizer steps of
    the recipe's batches, loss, optimizer, gradient accumulation, clipping and precision, at exponentially
    rising learning rates; the recipe's scheduler and optimizer.lr are not used. The caller checks the options
    and the recipe first (check_options, check_single_process, components.check_recipe), as `lr-find` does
    before it chooses the plot's file."""
    accelerator = make_accelerator(resolve_precision(recipe))
    torch.set_deterministic_debug_mode("warn" if recipe.trainer.deterministic else "default")
    set_seed(recipe.seed)
    data = build_data(recipe)
    steps_per_epoch(recipe.data.batch_size, recipe.trainer.grad_accum_steps, data.train)  # at least one batch
    set_seed(recipe.seed)
    model = adapt_model(recipe, build_model(recipe, data.task))
    scoring = build_scoring(recipe, data.task)
    check_loss_fits_task(recipe, data, scoring)
    check_first_batch(recipe, data, model, scoring)
    dry_run_optimizer(recipe, steps)
    model, optimizer = accelerator.prepare(model, build_optimizer(recipe, model))
    batches = TrainBatches(
        data.train, recipe.data.batch_size, recipe.seed, 0, 1, resolve_workers(recipe.data.num_workers),
        recipe.data.prefetch_factor, pin_memory=accelerator.device.type == "cuda",
    )
    try:
        losses = _batch_losses(batches, scoring.step, model, accelerator.device, recipe.trainer.grad_accum_steps)
        return _sweep(recipe, accelerator, model, optimizer, losses, exponential_lrs(min_lr, max_lr, steps))
    finally:
        batches.close()


def _sweep(
    recipe: Recipe, accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
    losses: Generator[torch.Tensor, None, None], lrs: list[float],
) -> RangeTest:
    """One optimizer step at each learning rate of `lrs` (over recipe.trainer.grad_accum_steps batches of
    `losses`), until the loss diverges."""
    groups = getattr(optimizer, "optimizer", optimizer).param_groups
    scales = [group["lr"] / recipe.optimizer.lr for group in groups]  # optimizer.groups keep their ratio to lr
    calls, grad_clip = step_calls(accelerator, optimizer), recipe.trainer.grad_clip
    accum = recipe.trainer.grad_accum_steps
    raw: list[float] = []
    smoothed: list[float] = []
    stopped, average = None, 0.0
    model.train()
    try:
        for step, lr in enumerate(lrs):
            for group, scale in zip(groups, scales):
                group["lr"] = lr * scale
            total = torch.zeros((), device=accelerator.device)
            for _ in range(accum):
                loss = next(losses)
                calls.backward(loss / accum)
                total += loss.detach()
            if grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), grad_clip)
            calls.step()
            calls.zero_grad()
            value = total.item() / accum
            if not math.isfinite(value):
                stopped = f"the loss became {value} at lr {lr:.3g}"
                break
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            raw.append(value)
            smoothed.append(average / (1 - SMOOTHING ** (step + 1)))
            if step > 0 and smoothed[-1] > DIVERGED * min(smoothed):
                stopped = f"the loss diverged at lr {lr:.3g} (over {DIVERGED:g}x its lowest)"
                break
    finally:
        losses.close()
    if not raw:
        raise UserError(f"lr-find: {stopped} at the first step, before any learning; lower --min-lr")
    return RangeTest(lrs[: len(raw)], raw, smoothed, stopped, lowest_point(smoothed, skip_begin=len(lrs) // 10))


def _batch_losses(
    batches: TrainBatches, step: Step, model: nn.Module, device: torch.device, accum: int
) -> Generator[torch.Tensor, None, None]:
    """The loss of each training batch in turn (forward only), epoch after epoch as long as asked, weighed
    as training weighs them (`accum` batches per optimizer step)."""
    epoch, processes = 0, Processes.single(device)
    while True:
        first, epoch_batches = peek(batches.epoch(epoch, 0, batches.indices(epoch, 0)))
        if first is None:
            return
        training = step.training(model, first, device, processes, accum)
        for batch in training.batches(epoch_batches, itertools.repeat(accum)):
            yield training.loss(batch)
        epoch += 1


def lowest_point(smoothed: list[float], skip_begin: int) -> int | None:
    """The index of the lowest smoothed loss, leaving out the first `skip_begin` points (the average is
    still settling); None when the loss did not fall after them."""
    values = smoothed[skip_begin:]
    if len(values) < 3 or (lowest := int(np.argmin(values))) == 0:
        return None
    return skip_begin + lowest


# --- the plot -----------------------------------------------------------------------------------


def plot_path(given: str | None, recipe_name: str) -> Path:
    """The plot file: the one given (a new .png file, checked as every user-named output is), or
    lr-find-<recipe name>.png in the current folder (-2, -3, ... when that name is taken)."""
    if given is not None:
        path = Path(given)
        if path.suffix.lower() != ".png":
            raise UserError(f"--plot {path}: give a .png file name")
        check_new_output(path, "--plot")
        return path
    number = 1
    while os.path.lexists(path := Path(f"lr-find-{recipe_name}{f'-{number}' if number > 1 else ''}.png")):
        number += 1
    check_new_output(path, "--plot")
    return path


def plot_range_test(result: RangeTest, path: Path, title: str) -> None:
    """Loss and smoothed loss against the learning rate (log axis), the suggestion marked."""
    import matplotlib.pyplot as plt

    from trainwright.finished.curves import save_figure  # (it chooses matplotlib's file-only backend)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", label="smoothed loss")
    if (lowest := result.lowest) is not None and (suggestion := result.suggestion) is not None:
        ax.plot(result.lrs[lowest], result.smoothed[lowest], "o", color="tab:red", label="lowest smoothed loss")
        ax.axvline(suggestion, color="tab:red", linestyle="--", linewidth=1,
                   label=f"suggested lr {suggestion:.3g} (a tenth of the lowest's)")
    low, high = min(result.smoothed), max(result.smoothed)
    margin = 0.1 * (high - low) or 0.1 * abs(high) or 0.1
    ax.set_ylim(low - margin, high + margin)  # the raw losses' spikes would squash the curve that matters
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="training loss", title=title)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, replace=False)

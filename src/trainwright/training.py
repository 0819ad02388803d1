"""`train` from start to finish: recipe -> components -> the run plan applied -> Trainer -> loss curves.

`train(recipe, run_dir)` is the Python API; the CLI plans first (from files alone, so an already
complete run answers without importing torch) and then calls `execute`."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from trainwright.accelerate_compat import cache_lomo_probe
from trainwright.components import (
    build_data, build_model, build_optimizer, build_scheduler, build_scoring, check_recipe,
)
from trainwright.data.paths import pin_paths
from trainwright.errors import UserError
from trainwright.launcher import resolve_precision, resolve_strategy
from trainwright.preflight import check_startup
from trainwright.processes import Processes, launch_rank
from trainwright.recipe import Recipe
from trainwright.run_plan import RunPlan, apply_plan, plan_run
from trainwright.rundir import RunDir
from trainwright.runlock import hold
from trainwright.trainer import Outcome, Trainer, steps_per_epoch


def train(
    recipe: Recipe, run_dir: str | Path, resume: str | Path | None = None, restart: bool = False,
    allow_data_change: bool = False,
) -> Outcome:
    """Train `recipe` in `run_dir`: start, resume from its newest valid checkpoint, or report it complete."""
    recipe, run = pin_paths(recipe), RunDir(run_dir)
    with hold(run):
        plan = plan_run(run, recipe, resume, restart, allow_data_change)
        if launch_rank() == 0:
            plan.announce()
        return execute(recipe, plan)


def execute(recipe: Recipe, plan: RunPlan) -> Outcome:
    """Carry out a run plan on every process of a launch."""
    if plan.completed is not None:
        return Outcome("already-completed", plan.completed)
    check_recipe(recipe)
    accelerator = make_accelerator(resolve_precision(recipe))
    processes = Processes.from_accelerator(accelerator, resolve_strategy(recipe))
    if recipe.data.batch_size % processes.world_size:
        raise UserError(
            f"data.batch_size={recipe.data.batch_size} is the global batch and must divide evenly "
            f"among {processes.world_size} processes"
        )
    # Deterministic kernels (warn where none exists). The same switch as use_deterministic_algorithms(True,
    # warn_only=True) without its import of torch._inductor (~1-2 s of start-up for a setting only
    # torch.compile reads).
    torch.set_deterministic_debug_mode("warn")
    set_seed(recipe.seed)
    data = build_data(recipe)
    total_steps = recipe.trainer.total_steps(steps_per_epoch(recipe, data))
    set_seed(recipe.seed)  # the model's initial weights depend on the seed alone
    model = build_model(recipe)
    scoring = build_scoring(recipe, data)
    optimizer = build_optimizer(recipe, model)
    scheduler = build_scheduler(recipe, optimizer, total_steps)
    data_record = check_startup(recipe, plan, data, model, scoring, total_steps)  # before the run dir is touched
    model, optimizer = accelerator.prepare(model, optimizer)
    apply_plan(plan, recipe, processes, data_record)
    trainer = Trainer(recipe, plan.run, accelerator, processes, data, scoring, model, optimizer, scheduler)
    outcome = trainer.fit(plan.resume_from)
    if outcome.status == "completed" and processes.is_main:
        draw_loss_curves(plan.run)
    return outcome


def make_accelerator(precision: str) -> Accelerator:
    """Accelerate decides devices and processes; on a machine without CUDA it runs on the CPU (gloo)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    cache_lomo_probe()
    on_cpu = not torch.cuda.is_available()
    if precision == "fp16" and on_cpu:  # Accelerate would quietly train in fp32
        raise UserError("trainer.mixed_precision=fp16 needs a GPU; on the CPU use bf16 (or no)")
    try:
        return Accelerator(cpu=on_cpu, mixed_precision=precision, step_scheduler_with_optimizer=False)
    except ValueError as exc:
        raise UserError(f"trainer.mixed_precision={precision} cannot run here: {exc}") from None


def draw_loss_curves(run: RunDir) -> None:
    """plots/loss_curves.png from metrics.jsonl (matplotlib is imported only now)."""
    from trainwright.curves import plot_curves
    from trainwright.tracking import read_metrics

    run.plots.mkdir(exist_ok=True)
    plot_curves(read_metrics(run.metrics_file), run.loss_curves)

"""`train` from start to finish: recipe -> components -> the run plan applied -> Trainer.

`train(recipe, run_dir)` is the Python API; the CLI plans first (from files alone, so an already
complete run answers without importing torch) and then calls `execute`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from trainwright.components import (
    adapt_model,
    build_data,
    build_model,
    build_optimizer,
    build_scheduler,
    build_scoring,
    check_recipe,
    seeded_model,
)
from trainwright.data.loading import steps_per_epoch
from trainwright.data.paths import pin_paths
from trainwright.distributed.accelerate_compat import cache_lomo_probe, keep_accelerate_fsdp_off
from trainwright.distributed.launcher import resolve_precision, resolve_strategy
from trainwright.distributed.parallel import DataParallel, Strategy
from trainwright.distributed.processes import Processes, launch_rank
from trainwright.errors import UserError
from trainwright.recipe import DistributedConfig, Recipe
from trainwright.run.directory import RunDir
from trainwright.run.exiting import closed_a_group
from trainwright.run.lock import hold
from trainwright.run.plan import RunPlan, apply_plan, plan_run
from trainwright.run.stopping import ending_without_launcher
from trainwright.training.callbacks import build_callbacks
from trainwright.training.ending import Outcome
from trainwright.training.preflight import check_startup
from trainwright.training.trainer import Trainer


def train(
    recipe: Recipe, run_dir: str | Path, resume: str | Path | None = None, restart: bool = False,
    allow_data_change: bool = False,
) -> Outcome:
    """Train `recipe` in `run_dir`: start, resume from its newest valid checkpoint, or report it complete."""
    started = time.perf_counter()
    recipe, run = pin_paths(recipe), RunDir(run_dir)
    with hold(run):
        plan = plan_run(run, recipe, resume, restart, allow_data_change)
        if launch_rank() == 0:
            plan.announce()
        return execute(recipe, plan, started)


def execute(recipe: Recipe, plan: RunPlan, started: float) -> Outcome:
    """Carry out a run plan on every process of a launch (`started`: the command's time.perf_counter() at
    its start, for train/startup_seconds)."""
    if plan.completed is not None:
        return Outcome("already-completed", plan.completed)
    check_recipe(recipe)
    precision, strategy_name = resolve_precision(recipe), resolve_strategy(recipe)
    with ending_without_launcher():  # the processes meet at the launcher's store
        accelerator = make_accelerator(precision)
    processes = Processes.from_accelerator(accelerator, strategy_name)
    if recipe.data.batch_size % processes.world_size:
        raise UserError(
            f"data.batch_size={recipe.data.batch_size} is the global batch and must divide evenly "
            f"among {processes.world_size} processes"
        )
    # Deterministic kernels (warn where none exists), unless the recipe trades bitwise resume for speed. The
    # same switch as use_deterministic_algorithms(True, warn_only=True) without its import of torch._inductor
    # (~1-2 s of start-up for a setting only torch.compile reads).
    torch.set_deterministic_debug_mode("warn" if recipe.trainer.deterministic else "default")
    set_seed(recipe.seed)
    data = build_data(recipe)
    total_steps = recipe.trainer.total_steps(
        steps_per_epoch(recipe.data.batch_size, recipe.trainer.grad_accum_steps, data.train)
    )
    set_seed(recipe.seed)  # the model's initial weights depend on the seed alone
    model = build_model(recipe, data.task)
    base = base_of_adapter(recipe, plan, model)
    model = adapt_model(recipe, model)
    scoring = build_scoring(recipe, data.task)
    data_record = check_startup(recipe, plan, data, model, scoring, total_steps)  # before the run dir is touched
    merge = None
    if base is not None:
        from trainwright.models.adapters import merger

        data_record["base"], merge = base, merger(recipe, lambda: seeded_model(recipe, data.task))
    compile_mode = recipe.trainer.compile_mode if recipe.trainer.compile else None
    strategy = strategy_for(accelerator, processes, recipe.distributed, precision, compile_mode)
    model, optimizer = strategy.prepare(model, lambda module: build_optimizer(recipe, module))
    # On the torch optimizer inside Accelerate's wrapper: the loop may call its step directly (step_calls).
    scheduler = build_scheduler(recipe, getattr(optimizer, "optimizer", optimizer), total_steps)
    apply_plan(plan, recipe, processes, data_record)
    callbacks = build_callbacks(recipe)
    trainer = Trainer(recipe, plan.run, accelerator, processes, strategy, data, scoring, model, optimizer, scheduler,
                      callbacks, merge)
    return trainer.fit(plan.resume_from, started, fallback=not plan.explicit)


def base_of_adapter(recipe: Recipe, plan: RunPlan, base: torch.nn.Module) -> dict[str, Any] | None:
    """With an adapter: the record of its base model (adapters.base_record), which a resume must find
    unchanged; None without one."""
    if recipe.adapter is None:
        return None
    from trainwright.models.adapters import base_record, check_same_base  # peft: only for recipes with an adapter

    saved = (plan.run.read_json(plan.run.data_file) or {}).get("base") if plan.resume_from is not None else None
    record = base_record(recipe, base, saved)
    check_same_base(saved, record, plan.run.path)
    return record


def make_accelerator(precision: str) -> Accelerator:
    """Accelerate decides devices and processes; on a machine without CUDA it runs on the CPU (gloo)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (read when CUDA starts)
    cache_lomo_probe()
    keep_accelerate_fsdp_off()
    on_cpu = not torch.cuda.is_available()
    if precision == "fp16" and on_cpu:  # Accelerate would quietly train in fp32
        raise UserError("trainer.mixed_precision=fp16 needs a GPU; on the CPU use bf16 (or no)")
    try:
        return Accelerator(cpu=on_cpu, mixed_precision=precision, step_scheduler_with_optimizer=False)
    except ValueError as exc:
        raise UserError(f"trainer.mixed_precision={precision} cannot run here: {exc}") from None


def strategy_for(
    accelerator: Accelerator, processes: Processes, config: DistributedConfig, precision: str, compile_mode: str | None
) -> Strategy:
    """The strategy of `processes.strategy` (parallel.py); `compile_mode`: torch.compile the model in that
    mode (None: not). FSDP is imported only for runs that use it."""
    if processes.strategy != "fsdp":
        return DataParallel(accelerator, compile_mode, config.activation_checkpointing)
    from trainwright.distributed.fsdp import FullySharded

    return FullySharded(accelerator, processes, config, precision, compile_mode)


def end_processes() -> None:
    """Close the process group, if a launch (or a sharded one-process run) opened one: a worker that exits
    with its group open can abort while exiting. The CLI calls it after `train`; a script that trains
    through the Python API under a launcher calls it once it is done with torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        closed_a_group()  # see exiting.py

"""The training loop: one loop on accelerate.Accelerator for every recipe."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from trainwright import __version__
from trainwright.checkpoint import CheckpointManager, Stateful, TrainState, save_weights, write_json_atomic
from trainwright.components import (
    build_data, build_loss, build_model, build_optimizer, build_scheduler, check_recipe, metric_names, output_kind,
)
from trainwright.data.loading import batches_per_epoch, iterate, train_indices
from trainwright.errors import UserError
from trainwright.evaluation import EVAL_BATCH_SIZE, evaluate
from trainwright.recipe import Recipe
from trainwright.rundir import RunDir
from trainwright.startup import prepare_run_dir
from trainwright.tracking import Tracker, read_metrics, sample_log

EXIT_PREEMPTED = 75  # SIGTERM/SIGUSR1: checkpoint saved, run the same command again to resume
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass
class Outcome:
    """How `fit` ended: 'completed', 'already-completed' (nothing to do) or 'preempted' (resumable)."""

    status: str
    summary: dict[str, Any]


def _cache_lomo_probe() -> None:
    """Accelerate's optimizer wrapper asks `is_lomo_available()` (an uncached importlib search of
    sys.path) twice per optimizer step: ~1.6 ms a step here, as much as a small model's whole step.
    Whether a package is installed cannot change during a run, so answer it once."""
    import accelerate.accelerator
    import accelerate.optimizer
    import accelerate.utils.imports

    probe = functools.cache(accelerate.utils.imports.is_lomo_available)
    accelerate.optimizer.is_lomo_available = probe
    accelerate.accelerator.is_lomo_available = probe


def make_accelerator(recipe: Recipe) -> Accelerator:
    """Accelerate decides devices and processes; on a machine without CUDA it runs on the CPU (gloo)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    _cache_lomo_probe()
    precision, on_cpu = recipe.trainer.mixed_precision, not torch.cuda.is_available()
    if precision == "fp16" and on_cpu:  # Accelerate would quietly train in fp32
        raise UserError("trainer.mixed_precision=fp16 needs a GPU; on the CPU use bf16 (or no)")
    # Accelerate keeps its settings in a process-wide singleton; forget a previous Trainer's (its process
    # group, kept in PartialState, stays), so trainers with different precisions can run in one process.
    AcceleratorState._reset_state()
    try:
        return Accelerator(cpu=on_cpu, mixed_precision=precision, step_scheduler_with_optimizer=False)
    except ValueError as exc:
        raise UserError(f"trainer.mixed_precision={precision} cannot run here: {exc}") from None


class Trainer:
    """Builds a recipe's components, then trains, validates, checkpoints and logs them."""

    def __init__(self, recipe: Recipe, run_dir: str | Path, resume: str | Path | None = None, restart: bool = False):
        check_recipe(recipe)
        self.recipe = recipe
        self.run = RunDir(run_dir)
        self.accelerator = make_accelerator(recipe)
        acc = self.accelerator
        self.rank, self.world_size = acc.process_index, acc.num_processes
        cfg = recipe.trainer
        if recipe.data.batch_size % self.world_size:
            raise UserError(
                f"data.batch_size={recipe.data.batch_size} is the global batch and must divide evenly "
                f"among {self.world_size} processes"
            )
        torch.use_deterministic_algorithms(True, warn_only=True)
        set_seed(recipe.seed)
        self.bundle = build_data(recipe)
        self.micro_per_epoch = batches_per_epoch(len(self.bundle.train), recipe.data.batch_size)
        if self.micro_per_epoch == 0:
            raise UserError(
                f"data.batch_size={recipe.data.batch_size} is larger than the training split "
                f"({len(self.bundle.train)} samples)"
            )
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.grad_accum_steps)
        self.total_steps = min(cfg.max_steps or sys.maxsize, cfg.epochs * self.steps_per_epoch)

        set_seed(recipe.seed)  # the model's initial weights depend on the seed alone
        model = build_model(recipe)
        self.loss_fn = build_loss(recipe)
        self.output_kind = output_kind(recipe, self.bundle)
        self.metric_names = metric_names(recipe, self.bundle)
        optimizer = build_optimizer(recipe, model)
        self.scheduler = build_scheduler(recipe, optimizer, self.total_steps)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.checkpoints = CheckpointManager(
            self.run.path, recipe.checkpoint, self.rank, self.world_size, acc.wait_for_everyone
        )
        self.state = TrainState(world_size=self.world_size, sampler_seed=recipe.seed, recipe_digest=recipe.digest())
        self._stop_signal = 0
        self._saved_step = -1
        self._explicit_resume = resume is not None
        self._resume_from = prepare_run_dir(
            self.run, recipe, self.checkpoints, acc.is_main_process, acc.wait_for_everyone, resume, restart
        )

    # --- start-up -------------------------------------------------------------------------------

    def _stateful(self) -> Stateful:
        return Stateful(
            model=self.accelerator.unwrap_model(self.model),
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.accelerator.scaler,
        )

    def _completed_summary(self) -> dict[str, Any] | None:
        if self._explicit_resume:
            return None
        summary = self.run.completed_summary()
        return summary if summary and summary["step"] >= self.total_steps else None

    # --- the loop -------------------------------------------------------------------------------

    def fit(self) -> Outcome:
        """Train to the end of the recipe (or to a stop signal); resumes from the newest valid checkpoint."""
        done = self._completed_summary()
        if done is not None:
            return Outcome("already-completed", done)
        acc, state = self.accelerator, self.state
        if acc.is_main_process:
            print(
                f"world_size={self.world_size} device={acc.device.type} precision={self.recipe.trainer.mixed_precision} "
                f"strategy={self.recipe.distributed.strategy}",
                flush=True,
            )
        if self._resume_from is not None:
            self.state = state = self.checkpoints.load(self._resume_from, self._stateful())
            state.world_size, state.recipe_digest = self.world_size, self.recipe.digest()
            self._saved_step = state.step
            if acc.is_main_process:
                print(
                    f"Resuming from step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch}) "
                    f"in {self._resume_from}",
                    flush=True,
                )
        wandb_on = acc.is_main_process and self.recipe.logging.wandb.mode != "disabled"
        state.wandb_run_id = wandb_id = self.run.wandb_run_id() if wandb_on else ""
        self.tracker = Tracker(self.recipe, self.run.path, state.step, wandb_id, acc.is_main_process)
        self.sample_log = (
            sample_log(self.run.path, self.rank, self.world_size, state.step) if self.recipe.trainer.record_samples else None
        )
        if acc.is_main_process:
            self.run.summary_file.unlink(missing_ok=True)  # rewritten when this run completes
        self._loss_sum = torch.tensor(state.loss_sum, dtype=torch.float64, device=acc.device)
        try:
            with self._stop_signals():
                outcome = self._loop()
        finally:
            self.tracker.close()
            if self.sample_log is not None:
                self.sample_log.close()
        return outcome

    def _loop(self) -> Outcome:
        state, cfg = self.state, self.recipe.trainer
        while state.step < self.total_steps:
            finished_epoch = self._train_epoch()
            if finished_epoch:
                state.epoch += 1
                state.batch_in_epoch = 0
                if state.epoch % cfg.eval_every_epochs == 0 or state.step >= self.total_steps:
                    self._validate()
            if self._stop_requested():
                self._save()
                return self._preempted()
            every_epochs = self.recipe.checkpoint.every_epochs
            if finished_epoch and (every_epochs and state.epoch % every_epochs == 0 or self._step_checkpoint_due()):
                self._save()
        if state.val_step != state.step:
            self._validate()
        if self._saved_step != state.step:
            self._save()
        return Outcome("completed", self._finish())

    def _train_epoch(self) -> bool:
        """Train from the saved position to the end of the epoch; False if stopped early (max_steps, signal)."""
        acc, state, recipe = self.accelerator, self.state, self.recipe
        accum, epoch, epoch_start = recipe.trainer.grad_accum_steps, state.epoch, state.batch_in_epoch
        started, samples_before = time.perf_counter(), state.samples_seen
        indices = list(train_indices(
            len(self.bundle.train), recipe.data.batch_size, recipe.seed, epoch, state.batch_in_epoch,
            self.rank, self.world_size,
        ))
        batches = iterate(self.bundle.train, iter(indices), recipe.data.num_workers)
        group_indices: list[int] = []
        progress = self._progress(epoch)
        self.model.train()
        for micro in range(state.batch_in_epoch, self.micro_per_epoch):
            inputs, targets = next(batches)
            group_start = micro - micro % accum
            group_end = min(group_start + accum, self.micro_per_epoch)
            last_in_group = micro + 1 == group_end
            inputs, targets = inputs.to(acc.device, non_blocking=True), targets.to(acc.device, non_blocking=True)
            with contextlib.nullcontext() if last_in_group else acc.no_sync(self.model):
                loss = self.loss_fn(self.model(inputs).float(), targets)
                acc.backward(loss / (group_end - group_start))
            self._loss_sum += loss.detach()
            state.loss_count += 1
            if self.sample_log is not None:
                group_indices += indices[micro - epoch_start].tolist()
            if not last_in_group:
                continue
            self._optimizer_step()
            state.step += 1
            if self.sample_log is not None:
                self.sample_log.log({"indices": group_indices}, state.step, epoch)
                group_indices = []
            state.batch_in_epoch = micro + 1
            state.samples_seen += recipe.data.batch_size * (group_end - group_start)
            progress.update(1)
            if state.step % recipe.trainer.log_every_steps == 0:
                self._log_train_loss()
            if state.batch_in_epoch < self.micro_per_epoch and self._step_checkpoint_due():
                self._save()
            if state.step >= self.total_steps or self._stop_requested():
                break
        progress.close()
        finished = state.batch_in_epoch == self.micro_per_epoch
        seconds, samples = time.perf_counter() - started, state.samples_seen - samples_before
        if finished and samples:
            metrics = {"train/epoch_seconds": seconds, "train/samples_per_second": samples / max(seconds, 1e-9)}
            self.tracker.log(metrics, state.step, epoch + 1)
        return finished

    def _optimizer_step(self) -> None:
        if self.recipe.trainer.grad_clip:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.recipe.trainer.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()

    def _progress(self, epoch: int) -> tqdm:
        return tqdm(
            total=self.steps_per_epoch,
            initial=math.ceil(self.state.batch_in_epoch / self.recipe.trainer.grad_accum_steps),
            desc=f"epoch {epoch + 1}/{self.recipe.trainer.epochs}",
            disable=not (self.accelerator.is_main_process and sys.stderr.isatty()),
            leave=False,
        )

    def _log_train_loss(self) -> None:
        state = self.state
        mean_loss = self.accelerator.reduce(self._loss_sum, "mean").item() / max(state.loss_count, 1)
        lr = self.optimizer.param_groups[0]["lr"]
        self.tracker.log({"train/loss": mean_loss, "lr": lr}, state.step, state.epoch + 1)
        self._loss_sum.zero_()
        state.loss_count = 0

    def _validate(self) -> None:
        acc, state = self.accelerator, self.state
        metrics = evaluate(
            acc.unwrap_model(self.model), self.bundle.val, self.loss_fn, self.bundle.task, self.output_kind,
            self.metric_names, acc.device, EVAL_BATCH_SIZE, self.rank, self.world_size, lambda t: acc.reduce(t, "sum"),
        )
        state.val_metrics = {f"val/{key}": value for key, value in metrics.items()}
        state.val_step = state.step
        monitored, mode = state.val_metrics.get(self.recipe.checkpoint.monitor), self.recipe.checkpoint.mode
        if monitored is not None and (
            state.best_metric is None or (monitored < state.best_metric if mode == "min" else monitored > state.best_metric)
        ):
            state.best_metric = monitored
        self.tracker.log(state.val_metrics, state.step, state.epoch)

    # --- checkpoints and stopping -----------------------------------------------------------------

    def _step_checkpoint_due(self) -> bool:
        every = self.recipe.checkpoint.every_steps
        return bool(every) and self.state.step % every == 0

    def _save(self) -> None:
        """Checkpoint the current step (the not-yet-logged loss is averaged over processes first)."""
        self.state.loss_sum = self.accelerator.reduce(self._loss_sum.clone(), "mean").item()
        self.checkpoints.save(self._stateful(), self.state, self.recipe.to_dict())
        self._saved_step = self.state.step

    @contextlib.contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """SIGTERM/SIGUSR1 ask the loop to finish its step, save and exit (a second signal changes nothing)."""

        def request_stop(signum: int, _frame: Any) -> None:
            if not self._stop_signal:
                print(f"trainwright: got {signal.Signals(signum).name}; saving a checkpoint after this step",
                      file=sys.stderr, flush=True)
            self._stop_signal = signum

        previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                # Once stopping, ignore further signals so they cannot turn the exit code 75 into a kill
                # (Python resets its own handlers to the default while it shuts down, but keeps SIG_IGN).
                signal.signal(sig, signal.SIG_IGN if self._stop_signal else handler)

    def _stop_requested(self) -> bool:
        """True on every process as soon as any process got a stop signal (they agree on the step)."""
        if self.world_size == 1:
            return bool(self._stop_signal)
        flag = torch.tensor([float(self._stop_signal)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "sum").item())

    def _preempted(self) -> Outcome:
        step = self.state.step
        if self.accelerator.is_main_process:
            print(
                f"Stopped at step {step}: checkpoint saved in {self.run.checkpoints}. "
                f"Run the same command to resume (exit code {EXIT_PREEMPTED}).",
                flush=True,
            )
        return Outcome("preempted", {"status": "preempted", "step": step})

    def _finish(self) -> dict[str, Any]:
        """Write the final weights and summary.json (main process)."""
        state = self.state
        summary = {
            "status": "completed",
            "recipe": self.recipe.name,
            "step": state.step,
            "epoch": state.epoch,
            "samples_seen": state.samples_seen,
            **state.val_metrics,
        }
        if self.accelerator.is_main_process:
            metadata = {"recipe": self.recipe.name, "trainwright_version": __version__, "step": str(state.step)}
            save_weights(self.accelerator.unwrap_model(self.model), self.run.model_file, metadata)
            from trainwright.plots import plot_curves  # matplotlib is imported only when needed

            self.run.plots.mkdir(exist_ok=True)
            plot_curves(read_metrics(self.run.metrics_file), self.run.plots / "loss_curves.png")
            write_json_atomic(self.run.summary_file, summary)
            self.checkpoints.resumed_from = None  # the run is complete: keep_last applies to every checkpoint
            self.checkpoints.prune()
        self.accelerator.wait_for_everyone()
        return summary

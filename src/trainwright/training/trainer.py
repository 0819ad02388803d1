"""The training loop: one loop on accelerate.Accelerator for every recipe."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import Dataset

from trainwright.checkpoint.format import TrainState
from trainwright.checkpoint.manager import CheckpointManager
from trainwright.checkpoint.objects import TrainObjects
from trainwright.checkpoint.weights import save_final
from trainwright.data.bundle import DataBundle, split_size
from trainwright.data.loading import TrainBatches, batches_per_epoch, peek, resolve_workers, steps_per_epoch
from trainwright.distributed.accelerate_compat import step_calls
from trainwright.distributed.parallel import Strategy
from trainwright.distributed.processes import Processes
from trainwright.errors import EXIT_PREEMPTED, UserError
from trainwright.models.parameters import logged_lrs
from trainwright.recipe import Recipe
from trainwright.run.directory import RunDir
from trainwright.run.stopping import StopSignals
from trainwright.run.tracking import JsonLinesFile, Tracker, sample_log
from trainwright.step import group_sizes
from trainwright.training import early_stopping, model_summary, throughput
from trainwright.training.callbacks import Callbacks, Named
from trainwright.training.ema import WeightAverage, averaged
from trainwright.training.ending import Outcome, completed_summary
from trainwright.training.evaluation import Scoring, evaluate
from trainwright.training.guards import disk_writes, kept, require_finite
from trainwright.training.progress import Progress
from trainwright.training.run_context import RunContext
from trainwright.training.running_loss import RunningLoss
from trainwright.training.validation import best_so_far, test_scores, validation_scores

_ALWAYS_SYNCED = contextlib.nullcontext()  # without gradient accumulation every backward reduces gradients


class Trainer:
    """Trains, validates, checkpoints and logs a recipe's components; constructing one touches no files."""

    def __init__(
        self,
        recipe: Recipe,
        run: RunDir,
        accelerator: Accelerator,
        processes: Processes,
        strategy: Strategy,
        data: DataBundle,
        scoring: Scoring,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any | None,
        callbacks: list[Named] | None = None,
        merge: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        """`callbacks`: the recipe's own (callbacks.build_callbacks); the built-in ones join them here.
        `merge` (a run with an adapter): its whole state dict -> the final weights (adapters.merger); then
        checkpoints hold only the parameters that train."""
        self.recipe, self.run, self.accelerator, self.processes = recipe, run, accelerator, processes
        self.strategy = strategy
        self.data, self.scoring = data, scoring
        self.model, self.optimizer, self.scheduler, self.merge = model, optimizer, scheduler, merge
        self.calls = step_calls(accelerator, optimizer)
        self.step = scoring.step
        self.micro_per_epoch = batches_per_epoch(split_size(data.train), recipe.data.batch_size)
        self.steps_per_epoch = steps_per_epoch(recipe.data.batch_size, recipe.trainer.grad_accum_steps, data.train)
        self.total_steps = recipe.trainer.total_steps(self.steps_per_epoch)
        ema, unwrapped = recipe.trainer.ema, accelerator.unwrap_model(model)
        self.average = WeightAverage(unwrapped, ema) if ema is not None else None
        self.state = TrainState(
            world_size=processes.world_size, sampler_seed=recipe.seed, recipe_digest=recipe.digest(),
            precision=accelerator.mixed_precision, steps_per_epoch=self.steps_per_epoch,
        )
        self.stops = StopSignals(processes)
        self.context = RunContext(  # what callbacks see (fit() gives it the resumed state and the tracker)
            self.state, self.total_steps, self.steps_per_epoch, processes, unwrapped, optimizer, run.path, self.stops,
            self.checkpoint_kept,
        )
        named = list(callbacks or [])
        if recipe.trainer.profile is not None:  # last: a recorded step holds the other callbacks' work
            from trainwright.training.profiling import Profiler  # torch.profiler: imported by runs that profile

            named.append(Named(Profiler(recipe.trainer.profile), "trainer.profile"))
        self.callbacks = Callbacks(named, self.context) if named else None  # None: the loop does no callback work
        saved_callbacks = self.callbacks if self.callbacks is not None and self.callbacks.keeps_state else None
        objects = TrainObjects(
            unwrapped, optimizer, scheduler, accelerator.scaler, self.average, saved_callbacks,
            trained_only=merge is not None,
        )
        self.checkpoints = CheckpointManager(run.checkpoints, recipe.checkpoint, processes, objects)
        self.batches = TrainBatches(
            data.train, recipe.data.batch_size, recipe.seed, processes.rank, processes.world_size,
            resolve_workers(recipe.data.num_workers), recipe.data.prefetch_factor,
            pin_memory=accelerator.device.type == "cuda",
        )

    # --- start-up -------------------------------------------------------------------------------

    def fit(self, resume_from: Path | None = None, started: float | None = None, fallback: bool = True) -> Outcome:
        """Train to the end of the recipe (or to a stop signal), from `resume_from` if given (`fallback`: or from
        an older checkpoint of the run where it does not fit, see CheckpointManager.load). `started`
        (a time.perf_counter() value): when the command started, to log train/startup_seconds at the first
        optimizer step."""
        self._started = started
        processes, recipe = self.processes, self.recipe
        if processes.is_main:
            print(
                f"world_size={processes.world_size} device={processes.device.type} "
                f"precision={self.accelerator.mixed_precision} strategy={processes.strategy}"
                + (f" compile={recipe.trainer.compile_mode}" if recipe.trainer.compile else ""),
                flush=True,
            )
        if resume_from is not None:
            saved = self.checkpoints.load(resume_from, fallback)
            self.state = self.context.state = state = dataclasses.replace(
                saved, world_size=processes.world_size, recipe_digest=recipe.digest(),
                precision=self.accelerator.mixed_precision, steps_per_epoch=self.steps_per_epoch,
            )
            if state.batch_in_epoch > self.micro_per_epoch:  # (the loop would find no batch to train on, forever)
                raise UserError(
                    f"{resume_from} is at batch {state.batch_in_epoch} of epoch {state.epoch}, but an epoch of this "
                    f"data has {self.micro_per_epoch} batches: the data changed since; resume on the data it was "
                    "trained on, or start over with --restart (the old run is kept)"
                )
            if processes.is_main:
                print(
                    f"Resuming from step {state.step} (epoch {state.epoch + 1}, batch {state.batch_in_epoch}) "
                    f"in {self.checkpoints.resumed_from}",
                    flush=True,
                )
        state = self.state
        wandb_on = processes.is_main and recipe.logging.wandb.mode != "disabled"
        state.wandb_run_id = self.run.wandb_run_id() if wandb_on else ""
        self.model_summary = model_summary.report(self.accelerator.unwrap_model(self.model), processes.is_main)
        self.throughput = throughput.of_run(
            recipe, self.scoring.kind.per_position, self.model_summary["parameters"], processes.device,
            processes.world_size,
        )
        self.progress = Progress.of_run(recipe, processes.is_main, self.total_steps, self.steps_per_epoch, state.step)
        self.tracker = self.context.tracker = Tracker(
            recipe, self.run, state.step, state.wandb_run_id, processes.is_main,
            run_config={"model_summary": self.model_summary}, shown=self.progress,
        )
        self.sample_log: JsonLinesFile | None = (
            sample_log(self.run, processes.rank, processes.world_size, state.step)
            if recipe.trainer.record_samples
            else None
        )
        self.loss = RunningLoss(state.loss_sum, state.loss_count)
        try:
            with self.stops.caught():
                if self.callbacks is not None:
                    self.callbacks.fit_start()
                return self._loop()
        finally:
            self._close()

    def _close(self) -> None:
        """Every way out of training: a pending checkpoint is finished (never left half-written), the writer
        thread and the logs are closed."""
        try:
            self._wait_for_checkpoint()
        finally:
            self.checkpoints.close()
            self.batches.close()
            self.tracker.close()
            if self.sample_log is not None:
                self.sample_log.close()

    # --- the loop -------------------------------------------------------------------------------

    def _loop(self) -> Outcome:
        state, every_eval = self.state, self.recipe.trainer.eval_every_epochs
        every_steps = self.recipe.trainer.eval_every_steps
        stop_early, stops = self.recipe.trainer.early_stopping, self.stops
        while state.step < self.total_steps and not state.ended_early():
            for end_of_epoch in self._train_steps():
                epoch_validation = end_of_epoch and (state.epoch % every_eval == 0 or state.step >= self.total_steps)
                if epoch_validation or (every_steps and state.step % every_steps == 0):
                    self._validate()
                    if epoch_validation and stop_early is not None:
                        early_stopping.observe(stop_early, state, more_to_train=state.step < self.total_steps)
                stopping = stops.stop_at(state.step)
                if stops.finished_by is not None and not state.ended_early():  # a callback's request_stop
                    state.stopped_by_callback, state.stop_reason = stops.finished_by
                if self.checkpoints.should_save(state.step, state.epoch, end_of_epoch=end_of_epoch, stopping=stopping):
                    self._save()
                if stopping:
                    return self._preempted()
                if state.step >= self.total_steps or state.ended_early():
                    break
        stops.finishing = True
        if state.val_step != state.step:
            self._validate()
        self._test()
        if self.checkpoints.should_save(state.step, state.epoch, finished=True):
            self._save()
        self._wait_for_checkpoint()  # the last checkpoint is on disk first
        if self.callbacks is not None:
            self.callbacks.fit_end()
        return Outcome("completed", self._finish())

    def _next_event(self) -> float:
        """The next step after which `_loop` may act (validate, save, stop or end), besides the end of an
        epoch and a stop signal received here, which `_train_steps` sees itself."""
        step = self.state.step
        return min(self.total_steps, self.checkpoints.next_save_due(step), self.stops.next_agreement(step),
                   self._next_validation(step))

    def _next_validation(self, step: int) -> float:
        """The first step after `step` that trainer.eval_every_steps validates at (inf without it)."""
        every = self.recipe.trainer.eval_every_steps
        return (step // every + 1) * every if every else math.inf

    def _train_steps(self) -> Iterator[bool]:
        """Train from the saved position to the end of the epoch. After an optimizer step that may need
        `_loop` (see _next_event, the end of the epoch, a stop signal here), yield whether it ended the epoch
        (then the epoch's timing is logged and the position moves on); the other steps go straight on."""
        state, recipe, micro_per_epoch = self.state, self.recipe, self.micro_per_epoch
        accum, epoch, epoch_start = recipe.trainer.grad_accum_steps, state.epoch, state.batch_in_epoch
        batch_size, log_every = recipe.data.batch_size, recipe.trainer.log_every_steps
        started, samples_before = time.perf_counter(), state.samples_seen
        indices = self.batches.indices(epoch, epoch_start)
        first, batches = peek(self.throughput.timed(self.batches.epoch(epoch, epoch_start, indices)))
        model = self.model
        # The step's calls as locals: on a small model the loop's own Python is a visible part of a step.
        if first is not None:
            training = self.step.training(model, first, self.accelerator.device, self.processes, accum)
            batch_loss = training.loss
            batches = training.batches(batches, group_sizes(epoch_start, micro_per_epoch, accum))
        backward, add_loss = self.calls.backward, self.loss.add
        optimizer_step, zero_grad = self.calls.step, self.calls.zero_grad
        scheduler_step = None if self.scheduler is None else self.scheduler.step
        average_step = None if self.average is None else self.average.update
        callbacks_step = None if self.callbacks is None else self.callbacks.step_end
        grad_clip, clip_grad_norm = recipe.trainer.grad_clip, self.accelerator.clip_grad_norm_
        gradient_sync, stops = self.strategy.gradient_sync, self.stops
        next_event = self._next_event()
        group_indices: list[int] = []
        model.train()
        with self.progress.bar(epoch, math.ceil(epoch_start / accum)) as progress:
            show_progress = not progress.disable
            for micro in range(epoch_start, micro_per_epoch):
                batch = next(batches)
                group_start = micro - micro % accum
                group_size = min(group_start + accum, micro_per_epoch) - group_start
                last_in_group = micro + 1 == group_start + group_size
                with _ALWAYS_SYNCED if accum == 1 else gradient_sync(model, enabled=last_in_group):
                    loss = batch_loss(batch)
                    backward(loss if group_size == 1 else loss / group_size)
                add_loss(loss.detach())
                if self.sample_log is not None:
                    group_indices += indices[micro - epoch_start].tolist()
                if not last_in_group:
                    continue
                if grad_clip:
                    clip_grad_norm(model.parameters(), grad_clip)
                optimizer_step()
                if scheduler_step is not None:
                    scheduler_step()
                state.step += 1
                if average_step is not None:
                    average_step(state.step)
                if self._started is not None:
                    self.tracker.log(
                        {"train/startup_seconds": time.perf_counter() - self._started}, state.step, epoch + 1
                    )
                    self._started = None
                    self.throughput.restart()
                if self.sample_log is not None:
                    self.sample_log.log({"indices": group_indices}, state.step, epoch + 1)
                    group_indices = []
                state.batch_in_epoch = micro + 1
                state.samples_seen += batch_size * group_size
                if show_progress:
                    progress.update(1)
                if state.step % log_every == 0:
                    self._log_train_loss()
                end_of_epoch = micro + 1 == micro_per_epoch
                if end_of_epoch:
                    seconds, samples = time.perf_counter() - started, state.samples_seen - samples_before
                    timing = {"train/epoch_seconds": seconds, "train/samples_per_second": samples / max(seconds, 1e-9)}
                    self.tracker.log(timing, state.step, epoch + 1)
                    state.epoch, state.batch_in_epoch = epoch + 1, 0
                if callbacks_step is not None:
                    callbacks_step()  # the step's gradients are still there
                zero_grad()
                if not end_of_epoch and state.step < next_event and not stops.pending:
                    continue
                yield end_of_epoch
                next_event = self._next_event()

    def _log_train_loss(self) -> None:
        state = self.state
        total, count = self.loss.read_over(self.processes)
        mean_loss = total / max(count, 1)
        self._require_finite(mean_loss, "training loss")
        self.tracker.log({"train/loss": mean_loss, **logged_lrs(self.optimizer), **self.throughput.read()}, state.step,
                         state.epoch_number())
        self.loss.reset()

    def _validate(self) -> None:
        """Score the validation split and the named ones (data.val_splits): val/<metric>, val/<name>/<metric>."""
        state = self.state
        state.val_metrics = validation_scores(self.data, self._score, self._require_finite)
        state.test_metrics = {}  # a test score is of the weights last validated
        state.val_step = state.step
        state.best_metric = best_so_far(state, self.recipe.checkpoint.monitor, self.recipe.checkpoint.mode)
        self.tracker.log(state.val_metrics, state.step, state.epoch_number())
        if self.callbacks is not None:
            self.callbacks.validation_end(state.val_metrics)

    def _score(self, split: Dataset) -> dict[str, float]:
        with averaged(self.average):
            return evaluate(self.accelerator.unwrap_model(self.model), split, self.scoring, self.processes)

    def _test(self) -> None:
        """Score the test split at the end of the run (trainer.test_at_end) into state.test_metrics, logged as
        test/<metric>, before the last checkpoint: a run resumed from it does not score it again."""
        state = self.state
        if self.data.test is None or not self.recipe.trainer.test_at_end or state.test_metrics:
            return
        state.test_metrics = test_scores(self.data, state, self._score)
        self.tracker.log(state.test_metrics, state.step, state.epoch_number())

    # --- checkpoints and stopping -----------------------------------------------------------------

    def _save(self) -> None:
        """Checkpoint the current step (the not-yet-logged loss is averaged over processes first); log how
        long training waited for it and how long the previous checkpoint took to write in the background
        (this one's, when callbacks watch checkpoints: they are handed it written)."""
        started = time.perf_counter()
        written = self._wait_for_checkpoint()
        self.state.loss_sum, self.state.loss_count = self.loss.read_over(self.processes)
        self._require_finite(self.state.loss_sum, "training loss")
        with disk_writes("a checkpoint", self.state.step, self.run.checkpoints):
            folder = self.checkpoints.save(self.state, self.recipe.to_dict())
        watched = self.callbacks is not None and self.callbacks.watches_checkpoints
        if watched:
            written = self._wait_for_checkpoint()  # by the main process: complete for every process after the barrier
        times = {"checkpoint/stall_seconds": time.perf_counter() - started}
        if written is not None:  # the last save's write time is not logged unless callbacks watch checkpoints
            times["checkpoint/write_seconds"] = written
        self.tracker.log(times, self.state.step, self.state.epoch_number())
        if watched and self.callbacks is not None:
            self.processes.barrier()
            self.callbacks.checkpoint_saved(folder)

    def _require_finite(self, value: float, what: str) -> None:
        """Stop on a non-finite loss (NonFiniteLoss); a checkpoint being written is finished first, so the
        message names the newest one kept."""
        if not math.isfinite(value):
            self._wait_for_checkpoint()
        require_finite(value, what, self.state.step, self.run.checkpoints)

    def checkpoint_kept(self) -> str:
        """Which checkpoint the run keeps, said once a pending one is written (for a message that ends it).
        Another process cannot know: the main process may still be writing one in the background."""
        if not self.processes.is_main:
            return "its checkpoints are kept"
        self._wait_for_checkpoint()
        return kept(self.run.checkpoints)

    def _wait_for_checkpoint(self) -> float | None:
        """Wait for the checkpoint being written in the background; a failed write (a full disk) is one
        message. Returns the seconds the write took (None when none was pending)."""
        with disk_writes("a checkpoint", self.checkpoints.pending_step or self.state.step, self.run.checkpoints):
            return self.checkpoints.wait()

    def _preempted(self) -> Outcome:
        self._wait_for_checkpoint()  # the checkpoint is on disk before exit 75
        if self.callbacks is not None:
            self.callbacks.fit_end()
        step = self.state.step
        if self.processes.is_main:
            print(
                f"Stopped at step {step}: checkpoint saved in {self.run.checkpoints}. "
                f"Run the same command to resume (exit code {EXIT_PREEMPTED}).",
                flush=True,
            )
        return Outcome("preempted", {"status": "preempted", "step": step})

    def _finish(self) -> dict[str, Any]:
        """Write the final weights and summary.json (main process)."""
        summary = completed_summary(self.recipe, self.state, self.steps_per_epoch, self.model_summary)
        save_final(self.run, summary, self.checkpoints.objects, self.strategy, self.model, self.processes, self.merge)
        if self.processes.is_main:
            self.checkpoints.finish()
        self.processes.barrier()
        return summary

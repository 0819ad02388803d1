"""What each `trainwright` command does: a thin call into the package per command (cli.py parses the
arguments and reports errors). Heavy imports (torch, Accelerate, matplotlib) happen inside the command
that needs them, so `check` and an already complete `train` stay fast."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from trainwright.data.paths import pin_paths
from trainwright.distributed.processes import launch_rank
from trainwright.errors import EXIT_PREEMPTED, UserError
from trainwright.recipe import load_recipe
from trainwright.run.directory import RunDir, default_run_dir
from trainwright.run.lock import hold
from trainwright.run.plan import plan_run

if TYPE_CHECKING:
    from trainwright.finished.predictions import Predictions

STARTED = time.perf_counter()  # for train/startup_seconds: from here to the first optimizer step


def train_command(args: argparse.Namespace) -> int:
    recipe = pin_paths(load_recipe(args.recipe, args.overrides))
    run = RunDir(args.run_dir or default_run_dir(recipe.name))
    with hold(run):
        plan = plan_run(run, recipe, args.resume, args.restart, args.allow_data_change)  # files alone: no torch yet
        if launch_rank() == 0:
            plan.announce()
        if plan.completed is not None:
            summary, state = plan.completed, "was already complete"
        else:
            from trainwright.training.start import end_processes, execute  # torch and Accelerate: only to train

            try:
                outcome = execute(recipe, plan, started=STARTED)
            finally:
                end_processes()
            if outcome.status == "preempted":
                return EXIT_PREEMPTED
            summary, state = outcome.summary, "complete"
    if launch_rank() == 0:
        scored = {k: v for k, v in summary.items() if k.startswith(("val/", "test/")) and v is not None}
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in scored.items())
        print(f"Run {state} at step {summary['step']}: {metrics}")
        if stopped := summary.get("stopped_early"):
            print(f"Stopped early after epoch {stopped['epoch']}: {stopped['reason']}")
        if stopped := summary.get("stopped_by_callback"):
            print(f"Run stopped by callback {stopped['callback']}: {stopped['reason']} (after step {stopped['step']})")
        print(f"Run dir: {run.path}")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    """Under a launcher each process scores its share of the split; the main process prints the whole's metrics."""
    from trainwright.distributed.launched import end_launched
    from trainwright.finished.inference import load_run

    run = load_run(args.run_dir, args.checkpoint, allow_data_change=args.allow_data_change, raw=args.raw_weights,
                   launched=True)
    with end_launched(run.processes):
        metrics = run.evaluate()
    if run.processes.is_main:
        print(json.dumps(metrics, indent=2))
    return 0


def predict_command(args: argparse.Namespace) -> int:
    """Under a launcher each process predicts its share of each batch; the main process prints them all."""
    from trainwright.distributed.launched import end_launched
    from trainwright.finished.inference import load_run

    if args.output is not None:
        if args.prompt is not None:
            raise UserError("--prompt generates text; it takes no --input or --output")
        return _predict_to_file(args)
    if args.prompt is not None and args.input is not None:
        raise UserError("--prompt generates text; it takes no --input or --output")
    run = load_run(args.run_dir, args.checkpoint, args.device, args.allow_data_change, raw=args.raw_weights,
                   launched=True)
    main = run.processes.is_main
    with end_launched(run.processes):
        if args.prompt is not None:
            if main:  # one text: nothing to share
                for piece in run.generate_stream(args.prompt, args.length, args.temperature, args.seed):
                    print(piece, end="", flush=True)  # each token as it comes
                print()
        elif args.input is None:  # the first N items of the run's own evaluation split
            _, predictions = run.predict_split(args.n)
            if main:
                print("\n".join(predictions.lines()))
        else:
            predictions = next(run.predict_stream(args.input, batch_size=args.n + 1))  # one more: are there more?
            if main:
                print("\n".join(predictions.lines()[: args.n]))
            if main and len(predictions) > args.n:
                print(f"trainwright: showing the first {args.n} predictions; --output FILE.csv writes one row per "
                      "input", file=sys.stderr)
    return 0


def _predict_to_file(args: argparse.Namespace) -> int:
    """`predict --input X --output FILE`; a stop signal on the way leaves no file and exits 75. Under a
    launcher each process predicts its share of each batch and the main process writes them all."""
    from tqdm.auto import tqdm

    from trainwright.distributed.launched import end_launched
    from trainwright.finished.inference import load_run
    from trainwright.finished.prediction_files import check_output, write_predictions
    from trainwright.run.interrupts import Stopped, stops_raise

    if args.input is None:
        raise UserError("--output writes the predictions for --input; give --input FILE as well")
    check_output(Path(args.output))  # before anything is read
    try:
        with stops_raise():
            run = load_run(args.run_dir, args.checkpoint, args.device, args.allow_data_change, raw=args.raw_weights,
                           launched=True)
            main = run.processes.is_main
            with end_launched(run.processes), tqdm(unit=" items", desc="predicting", file=sys.stderr,
                                                   disable=None if main else True) as progress:
                batches = _counted(run.predict_stream(args.input, args.batch_size), progress)
                count = write_predictions(batches, Path(args.output)) if main else sum(map(len, batches))
    except Stopped as stop:
        if launch_rank() == 0:
            print(f"trainwright: got {stop.name}; stopped predicting, nothing was written to {args.output} (run the "
                  "same command again to write it)", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    if main:
        print(f"Wrote {count} predictions to {args.output}")
    return 0


def _counted(stream: Iterator[Predictions], progress: Any) -> Iterator[Predictions]:
    """`stream`, each batch's items counted on the `progress` bar (tqdm) as it passes."""
    for predictions in stream:
        progress.update(len(predictions))
        yield predictions


def plot_command(args: argparse.Namespace) -> int:
    from trainwright.tuning.plots import is_study, plot_study

    if is_study(Path(args.run_dir)):
        paths = plot_study(Path(args.run_dir))
    else:
        from trainwright.finished.plots import plot_run

        paths = plot_run(RunDir.existing(args.run_dir))
    print("\n".join(map(str, paths)))
    return 0


def export_command(args: argparse.Namespace) -> int:
    from trainwright.finished.export import export_hf, export_weights

    done = (export_hf if args.hf else export_weights)(args.source, args.out, raw=args.raw_weights)
    print(
        f"Exported step {done.step} of {done.checkpoint} ({done.tensors} tensors, {done.parameters:,} parameters) "
        f"to {args.out}"
    )
    return 0


def lr_find_command(args: argparse.Namespace) -> int:
    from trainwright.components import check_recipe
    from trainwright.training.lr_find import (
        check_options,
        check_single_process,
        lr_range_test,
        plot_path,
        plot_range_test,
    )

    check_options(args.min_lr, args.max_lr, args.steps)
    check_single_process()
    recipe = pin_paths(load_recipe(args.recipe, args.overrides))
    check_recipe(recipe)
    path = plot_path(args.plot, recipe.name)  # before anything is trained
    print(f"lr-find: {args.steps} steps from lr {args.min_lr:.3g} to {args.max_lr:.3g} on a throwaway copy of "
          f"{recipe.name}'s model", file=sys.stderr, flush=True)
    result = lr_range_test(recipe, args.min_lr, args.max_lr, args.steps)
    plot_range_test(result, path, f"Learning-rate range test: {recipe.name}")
    if result.stopped:
        print(f"Stopped after {len(result.lrs)} steps: {result.stopped}", file=sys.stderr)
    if result.lowest is None:
        raise UserError(
            f"no learning rate to suggest: the smoothed loss did not fall in the {len(result.lrs)} steps taken "
            f"(up to lr {result.lrs[-1]:.3g}; the first {args.steps // 10} are not judged); lower --min-lr if it "
            f"diverged at once, raise --max-lr if it never moved, or check the recipe (plot: {path})"
        )
    print(f"Lowest smoothed loss {result.smoothed[result.lowest]:.4g} at lr {result.lrs[result.lowest]:.3g}; "
          f"suggested: a tenth of it; plot: {path}", file=sys.stderr)
    print(f"optimizer.lr={result.suggestion:.3g}")
    return 0


def check_command(args: argparse.Namespace) -> int:
    from trainwright.components import check_recipe
    from trainwright.training.preflight import dry_run_optimizer

    recipe = load_recipe(args.recipe, args.overrides)
    check_recipe(recipe)
    # The optimizer and scheduler's first steps, as train's start-up tries them; the run's length depends on
    # the data (not read here): its cap, else a length no real run's warm-up exceeds.
    dry_run_optimizer(recipe, recipe.trainer.max_steps or 10**9)
    print(yaml.safe_dump(recipe.to_dict(), sort_keys=False), end="")
    return 0


def cv_command(args: argparse.Namespace) -> int:
    from trainwright.tuning.cv import cross_validate

    return cross_validate(Path(args.recipe), args.overrides, args.folds, args.run_dir, args.parallel)


def sweep_command(args: argparse.Namespace) -> int:
    from trainwright.tuning.sweep import sweep

    return sweep(Path(args.spec), args.overrides, args.run_dir, args.parallel, args.slurm)


def ls_command(args: argparse.Namespace) -> int:
    from trainwright.recipe.shipped import list_shipped

    print(list_shipped())
    return 0


def cp_command(args: argparse.Namespace) -> int:
    from trainwright.recipe.shipped import copy_shipped

    print(f"Wrote {copy_shipped(args.name, Path(args.destination))}")
    return 0

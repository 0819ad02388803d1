"""`trainwright train | eval | predict | plot | check`: argument parsing and user-error reporting only."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

from trainwright import __version__
from trainwright.data.paths import ALLOW_FLAG, pin_paths
from trainwright.errors import UserError
from trainwright.launcher import report_to_launcher
from trainwright.processes import launch_rank
from trainwright.recipe import load_recipe
from trainwright.run_plan import plan_run
from trainwright.rundir import RunDir
from trainwright.runlock import hold

STARTED = time.perf_counter()  # for train/startup_seconds: from here to the first optimizer step


def _train(args: argparse.Namespace) -> int:
    recipe = pin_paths(load_recipe(args.recipe, args.overrides))
    run = RunDir(args.run_dir or os.path.join("runs", recipe.name))
    with hold(run):
        plan = plan_run(run, recipe, args.resume, args.restart, args.allow_data_change)  # files alone: no torch yet
        if _is_main_process():
            plan.announce()
        if plan.completed is not None:
            summary, state = plan.completed, "was already complete"
        else:
            from trainwright.training import end_processes, execute  # torch and Accelerate: only to train
            from trainwright.trainer import EXIT_PREEMPTED

            try:
                outcome = execute(recipe, plan, started=STARTED)
            finally:
                end_processes()
            if outcome.status == "preempted":
                return EXIT_PREEMPTED
            summary, state = outcome.summary, "complete"
    if _is_main_process():
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in summary.items() if k.startswith("val/") and v is not None)
        print(f"Run {state} at step {summary['step']}: {metrics}")
        print(f"Run dir: {run.path}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from trainwright.inference import load_run

    run = load_run(args.run_dir, args.checkpoint, allow_data_change=args.allow_data_change)
    print(json.dumps(run.evaluate(), indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from trainwright.inference import load_run

    if args.output is not None:
        from trainwright.prediction_files import check_output

        if args.input is None:
            raise UserError("--output writes the predictions for --input; give --input FILE as well")
        check_output(Path(args.output))  # before anything is read
    run = load_run(args.run_dir, args.checkpoint, args.device, args.allow_data_change)
    if args.input is None:  # the first N items of the run's own evaluation split
        _, predictions = run.predict_split(args.n)
        print("\n".join(predictions.lines()))
    elif args.output is None:
        predictions = next(run.predict_stream(args.input, batch_size=args.n + 1))  # one more: are there more?
        print("\n".join(predictions.lines()[: args.n]))
        if len(predictions) > args.n:
            print(f"trainwright: showing the first {args.n} predictions; --output FILE.csv writes one row per input",
                  file=sys.stderr)
    else:
        from tqdm.auto import tqdm

        from trainwright.prediction_files import write_predictions

        with tqdm(unit=" items", desc="predicting", file=sys.stderr, disable=None) as progress:
            batches = (progress.update(len(p)) or p for p in run.predict_stream(args.input, args.batch_size))
            count = write_predictions(batches, Path(args.output))
        print(f"Wrote {count} predictions to {args.output}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from trainwright.plots import plot_run

    for path in plot_run(RunDir.existing(args.run_dir)):
        print(path)
    return 0


def _export(args: argparse.Namespace) -> int:
    from trainwright.export import export_weights

    done = export_weights(args.source, args.out)
    print(f"Exported step {done.step} of {done.checkpoint} ({done.tensors} tensors, {done.parameters:,} parameters) to {args.out}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from trainwright.components import check_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    check_recipe(recipe)
    print(yaml.safe_dump(recipe.to_dict(), sort_keys=False), end="")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number (at least 1), got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_allow_data_change(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument(
        ALLOW_FLAG, action="store_true",
        help=f"{what} even if the data differ from those the run trained on (recorded in <run dir>/data.json)",
    )


def _add_predict_options(predict: argparse.ArgumentParser) -> None:
    predict.add_argument(
        "--input", metavar="PATH",
        help="new inputs: a CSV with the training's columns (tabular runs), a CSV of points (x,y for heart, x for "
        "linear regression), an image file, a folder of images or an IDX file (image runs)",
    )
    predict.add_argument(
        "--output", metavar="FILE",
        help="write one row per input to FILE.csv or FILE.jsonl (id, prediction, actual where given, class "
        "probabilities); must not exist",
    )
    predict.add_argument("-n", type=_positive_int, default=10, help="items to print without --output (default 10)")
    predict.add_argument("--batch-size", type=_positive_int, default=1024, help="inputs per batch (default 1024)")
    predict.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                         help="where the model runs (default auto: a CUDA GPU when there is one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainwright",
        description="Recipe-driven PyTorch training on HuggingFace Accelerate.",
        epilog="Example: trainwright train recipes/heart.yaml trainer.epochs=3 --run-dir runs/heart",
    )
    parser.add_argument("--version", action="version", version=f"trainwright {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a recipe (resumes from the run dir's newest valid checkpoint)",
        description="Train a recipe. Run the same command again to resume a stopped run.",
    )
    train.add_argument("recipe", help="recipe YAML file, e.g. recipes/heart.yaml")
    train.add_argument(
        "overrides", nargs="*", default=[], metavar="key.path=value", help="override recipe keys (YAML values)"
    )
    train.add_argument("--run-dir", help="where the run lives (default: runs/<recipe name>)")
    train.add_argument("--resume", metavar="CHECKPOINT", help="resume from this checkpoint folder")
    train.add_argument(
        "--restart", action="store_true",
        help="start over: the existing run dir is renamed to <dir>.old-<time>, never deleted",
    )
    _add_allow_data_change(train, "resume")
    train.set_defaults(handler=_train)

    for name, help_text, handler in (
        ("eval", "print test/val metrics of a finished run as JSON", _eval),
        ("predict", "predict on new inputs (--input), or on the first N test items", _predict),
        ("plot", "write loss curves and prediction plots to <run dir>/plots/", _plot),
    ):
        command = commands.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        command.add_argument("run_dir", help="a run dir written by `trainwright train`")
        if name == "predict":
            _add_predict_options(command)
        if name != "plot":
            command.add_argument(
                "--checkpoint", metavar="latest|DIR",
                help="use a checkpoint's weights (the newest valid one, or a checkpoint folder) instead of the final "
                "ones, e.g. for a run that has not finished",
            )
            _add_allow_data_change(command, name)
        command.set_defaults(handler=handler)

    export = commands.add_parser(
        "export", help="write the model weights of a checkpoint (full or sharded) to one safetensors file",
        description="Write the whole model's weights of a checkpoint folder, or of a run dir's newest valid "
        "checkpoint, to one safetensors file (sharded checkpoints are consolidated; no launcher needed).",
    )
    export.add_argument("source", help="a checkpoint folder (runs/X/checkpoints/step_...) or a run dir")
    export.add_argument("--out", required=True, help="the safetensors file to write (must not exist)")
    export.set_defaults(handler=_export)

    check = commands.add_parser("check", help="validate a recipe and print it resolved")
    check.add_argument("recipe", help="recipe YAML file")
    check.add_argument("overrides", nargs="*", default=[], metavar="key.path=value", help="override recipe keys")
    check.set_defaults(handler=_check)
    return parser


def _is_main_process() -> bool:
    return launch_rank() == 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; overrides may also come after options (`train R --run-dir D k=v`)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _os_error(exc: OSError) -> UserError:
    """An environment error nothing more specific caught (a full disk, a read-only folder), as one message."""
    names = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name)
    return UserError(f"{exc.strerror or exc}" + (f": {names}" if names else ""))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        try:
            return args.handler(args)
        except OSError as exc:
            raise _os_error(exc) from None
    except UserError as exc:
        message = f"trainwright: error: {exc}"
        if _is_main_process():
            print(message, file=sys.stderr, flush=True)
        report_to_launcher(message)  # every process: whichever the launcher reports as the root cause names it
        return exc.exit_code
    except KeyboardInterrupt:
        print("trainwright: interrupted", file=sys.stderr)
        return 130

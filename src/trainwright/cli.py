"""The `trainwright` command line: argument parsing and user-error reporting only; what each command
does is in commands.py. This module imports nothing heavy at its top (commands.py, with the recipe's
pydantic models, only once the signal handling is in place), so a signal in a command's first instant
is one message too."""

from __future__ import annotations

import argparse
import sys

from trainwright import __version__
from trainwright.errors import UserError
from trainwright.run import interrupts
from trainwright.run.exiting import leave

LR_FIND_DESCRIPTION = (
    "Train a throwaway copy of the recipe's model while the learning rate rises exponentially from --min-lr to "
    "--max-lr; plot the smoothed loss against it and print the suggested learning rate as an override "
    "(optimizer.lr=...). Writes the plot and nothing else (no run dir)."
)


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _number(text: str, expected: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _non_negative_float(text: str) -> float:
    value = _number(text, "a number (0 or more)")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text, "a number above 0")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def _add_allow_data_change(command: argparse.ArgumentParser, what: str) -> None:
    from trainwright.data.paths import ALLOW_FLAG

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
    predict.add_argument("--prompt", metavar="TEXT",
                         help="language models (data: text): print TEXT and the text the model writes after it")
    predict.add_argument(
        "--length", type=_positive_int, default=200, help="--prompt: tokens to generate (default 200, at most 100,000)"
    )
    predict.add_argument("--temperature", type=_non_negative_float, default=0.8,
                         help="--prompt: sampling temperature; 0 picks the most likely token each time (default 0.8)")
    predict.add_argument("--seed", type=int, default=0, help="--prompt: the sampling seed (default 0)")


def _add_recipe(command: argparse.ArgumentParser, name: str = "recipe", what: str = "recipe YAML file",
                overrides: str = "override recipe keys (YAML values)") -> None:
    """The positional recipe (or spec) file and the key.path=value overrides after it."""
    command.add_argument(name, help=what)
    command.add_argument("overrides", nargs="*", default=[], metavar="key.path=value", help=overrides)


def _add_study(subcommands: argparse._SubParsersAction, name: str, help_text: str, description: str,
               default_dir: str, what: str) -> argparse.ArgumentParser:
    """`cv` or `sweep`: many run dirs in one folder, trained one after another or N at a time."""
    command = subcommands.add_parser(name, help=help_text, description=description)
    command.add_argument("--run-dir", help=f"where the {what}' run dirs go (default: {default_dir})")
    command.add_argument("--parallel", type=_positive_int, default=1,
                         help=f"{what} to train at once on this machine, sharing its cores (default 1)")
    return command


def build_parser() -> argparse.ArgumentParser:
    from trainwright import commands

    parser = argparse.ArgumentParser(
        prog="trainwright",
        description="Recipe-driven PyTorch training on HuggingFace Accelerate.",
        epilog="Example: trainwright train recipes/heart.yaml trainer.epochs=3 --run-dir runs/heart (a shipped "
        "recipe may be named: trainwright train heart; `trainwright ls` lists them)",
    )
    parser.add_argument("--version", action="version", version=f"trainwright {__version__}")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = subcommands.add_parser(
        "train", help="train a recipe (resumes from the run dir's newest valid checkpoint)",
        description="Train a recipe. Run the same command again to resume a stopped run.",
    )
    _add_recipe(train, what="recipe YAML file, e.g. recipes/heart.yaml")
    train.add_argument("--run-dir", help="where the run lives (default: runs/<recipe name>; under a W&B sweep "
                       "agent runs/<recipe name>-sweep-<sweep id>/<run id>)")
    train.add_argument("--resume", metavar="CHECKPOINT", help="resume from this checkpoint folder")
    train.add_argument(
        "--restart", action="store_true",
        help="start over: the existing run dir is renamed to <dir>.old-<time>, never deleted",
    )
    _add_allow_data_change(train, "resume")
    train.set_defaults(handler=commands.train_command)

    for name, help_text, handler in (
        ("eval", "print test/val metrics of a finished run as JSON", commands.eval_command),
        ("predict", "predict on new inputs (--input), on the first N test items, or generate text (--prompt)",
         commands.predict_command),
        ("plot", "write loss curves and prediction plots to <run dir>/plots/ (on a cv or sweep folder: the "
         "comparison of its runs)", commands.plot_command),
    ):
        command = subcommands.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        command.add_argument("run_dir", help="a run dir written by `trainwright train`")
        if name == "predict":
            _add_predict_options(command)
        if name != "plot":
            command.add_argument(
                "--checkpoint", metavar="latest|DIR",
                help="use a checkpoint's weights (the newest valid one, or a checkpoint folder) instead of the final "
                "ones, e.g. for a run that has not finished",
            )
            _add_raw_weights(command)
            _add_allow_data_change(command, name)
        command.set_defaults(handler=handler)

    cv = _add_study(
        subcommands, "cv", "k-fold cross-validation: one run per fold, then each fold's metrics with mean and std",
        "Train the recipe once per fold (DIR/fold_k), validating on fold k and training on the others; write "
        "DIR/cv_summary.json. Run the same command again to go on after a stop.", "runs/<recipe name>-cv", "folds",
    )
    _add_recipe(cv)
    cv.add_argument("--folds", type=_whole_number,  # cv says what K may be: at least 2, at most the items
                    help="number of folds K, at least 2 (default: the recipe's cv.folds)")
    cv.set_defaults(handler=commands.cv_command)

    sweep = _add_study(
        subcommands, "sweep", "hyperparameter sweep: one run per trial of a search space, then a leaderboard",
        "Train one run per trial of the spec's search space (DIR/trial_NNN) and rank them by the spec's metric "
        "(DIR/sweep.json, DIR/sweep.csv). Run the same command again to go on after a stop.", "runs/<spec name>",
        "trials",
    )
    _add_recipe(sweep, "spec", "sweep spec YAML (recipe, method, metric, parameters), e.g. recipes/sweeps/...",
                "override keys of every trial")
    sweep.add_argument(
        "--slurm",
        action="store_true",
        help="write DIR/sweep.sbatch, a Slurm job array of one preemptible task per trial, and submit it",
    )
    sweep.set_defaults(handler=commands.sweep_command)

    export = subcommands.add_parser(
        "export", help="write the model weights of a checkpoint (full or sharded) to one safetensors file",
        description="Write the whole model's weights of a checkpoint folder, or of a run dir's newest valid "
        "checkpoint, to one safetensors file (sharded checkpoints are consolidated; no launcher needed).",
    )
    export.add_argument("source", help="a checkpoint folder (runs/X/checkpoints/step_...) or a run dir")
    export.add_argument(
        "--out", required=True, help="the safetensors file (with --hf: folder) to write (must not exist)"
    )
    export.add_argument("--hf", action="store_true",
                        help="a Hugging Face model (model.name: hf): write a save_pretrained folder (config.json, "
                        "model.safetensors) that transformers' from_pretrained loads")
    _add_raw_weights(export)
    export.set_defaults(handler=commands.export_command)

    lr_find = subcommands.add_parser(
        "lr-find", help="learning-rate range test: plot the loss against a rising LR and suggest optimizer.lr",
        description=LR_FIND_DESCRIPTION)
    _add_recipe(lr_find, what="recipe YAML file, e.g. recipes/heart.yaml")
    lr_find.add_argument("--min-lr", type=_positive_float, default=1e-7, metavar="LR",
                         help="the first learning rate (default 1e-7)")
    lr_find.add_argument("--max-lr", type=_positive_float, default=10.0, metavar="LR",
                         help="the last learning rate (default 10)")
    lr_find.add_argument("--steps", type=_positive_int, default=100, metavar="N",
                         help="optimizer steps from --min-lr to --max-lr (default 100, at least 20)")
    lr_find.add_argument("--plot", metavar="FILE.png",
                         help="where the plot goes (must not exist; default: lr-find-<recipe name>.png in the current "
                         "folder, numbered -2, -3, ... when taken)")
    lr_find.set_defaults(handler=commands.lr_find_command)

    check = subcommands.add_parser("check", help="validate a recipe and print it resolved")
    _add_recipe(check)
    check.set_defaults(handler=commands.check_command)

    listing = subcommands.add_parser("ls", help="list the shipped recipes, launch configs and Slurm scripts")
    listing.set_defaults(handler=commands.ls_command)
    copy = subcommands.add_parser(
        "cp", help="copy a shipped recipe, launch config or Slurm script to edit it",
        description="Copy one shipped file (a recipe by name, e.g. heart, or a path that `trainwright ls` shows, "
        "e.g. accelerate_configs/cpu_2proc.yaml) to DEST, a new file or an existing folder. Nothing is "
        "overwritten.",
    )
    copy.add_argument("name", help="a shipped recipe's name or a shipped file's path, as `trainwright ls` shows it")
    copy.add_argument("destination", help="a new file, or an existing folder to copy it into")
    copy.set_defaults(handler=commands.cp_command)
    return parser


def _add_raw_weights(command: argparse.ArgumentParser) -> None:
    command.add_argument("--raw-weights", action="store_true",
                         help="a run with trainer.ema: use the raw weights instead of their moving average")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; overrides may also come after options (`train R --run-dir D k=v`)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # (imported here, as commands.py is: the recipe package loads pydantic, and this module must stay light)
    from trainwright.recipe.shipped import recipe_argument

    for attribute in ("recipe", "spec"):  # a shipped recipe by name: `trainwright train heart`
        if hasattr(args, attribute):
            setattr(args, attribute, recipe_argument(getattr(args, attribute)))
    return args


def _os_error(exc: OSError) -> UserError:
    """An environment error nothing more specific caught (a full disk, a read-only folder), as one message."""
    names = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name)
    return UserError(f"{exc.strerror or exc}" + (f": {names}" if names else ""))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = _main(argv)
    except (KeyboardInterrupt, interrupts.Stopped) as signalled:
        return interrupts.ending(signalled, argv)
    except Exception:
        if (received := interrupts.received.first()) is None:
            raise
        return interrupts.ending(received, argv)  # its exception, swallowed on the way, broke something else
    if code == 0 and (received := interrupts.received.first()) is not None:  # swallowed by a library
        return interrupts.ending(received, argv)
    return code


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        try:
            return args.handler(args)
        except OSError as exc:
            raise _os_error(exc) from None
    except UserError as exc:
        from trainwright.distributed.launcher import report_to_launcher

        message = f"trainwright: error: {exc}"
        interrupts.say(message)
        report_to_launcher(message)  # every process: whichever the launcher reports as the root cause names it
        return exc.exit_code


def run() -> None:
    """The `trainwright` command (console script and `python -m trainwright`): the signal handling first, then
    main(), then exit with its code (exiting.py says how a process of a launch leaves)."""
    interrupts.install()
    leave(main())

"""Using a finished run: reload its recipe, data and final weights; evaluate and predict."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model
from torch import nn

from trainwright.checkpoint.format import step_of
from trainwright.checkpoint.retention import step_dirs
from trainwright.components import build_data, build_model, build_scoring
from trainwright.data.bundle import DataBundle
from trainwright.data.fingerprint import check_same_data, data_record
from trainwright.data.loading import eval_indices, iterate
from trainwright.errors import UserError
from trainwright.evaluation import EVAL_BATCH_SIZE, Scoring, evaluate
from trainwright.files import warn
from trainwright.predictions import predicted_labels, probabilities
from trainwright.processes import Processes
from trainwright.recipe import Recipe
from trainwright.rundir import RunDir


@dataclass
class TrainedRun:
    """A finished run's recipe, data and model with its final weights."""

    recipe: Recipe
    bundle: DataBundle
    model: nn.Module
    scoring: Scoring


def load_run(run: RunDir, allow_data_change: bool = False) -> TrainedRun:
    """The run's recipe, data (checked against data.json) and model with its final weights (on the CPU,
    in eval mode); says on stderr which step the weights are from."""
    recipe = run.recipe()
    weights = run.require_model()
    step = _weights_step(weights)
    bundle = build_data(recipe)
    check_same_data(run.read_json(run.data_file), data_record(bundle), run.path, allow_data_change)
    model = build_model(recipe)
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except (SafetensorError, RuntimeError) as exc:
        raise UserError(f"{weights} is damaged or does not fit the run's model: {str(exc).splitlines()[0]}") from None
    if missing or unexpected:
        raise UserError(f"{weights} does not fit the run's model (missing {missing}, unexpected {unexpected})")
    model.eval()
    _say_which_weights(run, weights, step)
    return TrainedRun(recipe, bundle, model, build_scoring(recipe, bundle))


def _weights_step(weights: Path) -> int | None:
    """The training step recorded in model.safetensors (None when it has none); damaged files are a UserError."""
    try:
        with safe_open(str(weights), "pt") as file:
            step = (file.metadata() or {}).get("step")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{weights} is damaged: {str(exc).splitlines()[0]}") from None
    return int(step) if step and step.isdigit() else None


def _say_which_weights(run: RunDir, weights: Path, step: int | None) -> None:
    """The weights are the final ones of a completed run, or older than what the run trained since."""
    newest = max((step_of(folder) for folder in step_dirs(run.checkpoints)), default=None)
    note = f"using the weights of step {step} ({weights})"
    if newest is not None and step is not None and newest > step:
        note += f"; the run has trained on to step {newest} since and is not finished (train it again to complete it)"
    warn(note)


def evaluate_run(trained: TrainedRun) -> dict[str, float]:
    """Metrics on the test split (the validation split where the data set has no test split)."""
    split = "test" if trained.bundle.test is not None else "val"
    metrics = evaluate(trained.model, trained.bundle.eval_split, trained.scoring, Processes.single())
    return {f"{split}/{key}": value for key, value in metrics.items()}


@torch.no_grad()
def model_outputs(trained: TrainedRun, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, outputs, targets) for the first `count` items of the evaluation split."""
    split = trained.bundle.eval_split
    size = len(split) if count is None else min(count, len(split))
    batches = list(iterate(split, (index for index, _ in eval_indices(size, EVAL_BATCH_SIZE, 0, 1))))
    inputs = torch.cat([b[0] for b in batches])
    targets = torch.cat([b[1] for b in batches])
    return inputs, trained.model(inputs).float(), targets


def _number(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 1e4 else f"{value:.1f}"


def prediction_lines(trained: TrainedRun, count: int) -> Iterator[str]:
    """One line per item, in the tutorials' form."""
    task, describe = trained.bundle.task, trained.bundle.describe_input
    _, outputs, targets = model_outputs(trained, count)
    for i in range(len(outputs)):
        prefix = f"{describe(i)} " if describe else ""
        if task.kind == "regression":
            predicted, actual = task.decode(outputs[i]).item(), task.decode(targets[i]).item()
            yield f"{prefix}Predicted: {_number(predicted)}, Actual: {_number(actual)}"
            continue
        label = int(predicted_labels(outputs[i : i + 1], task, trained.scoring.output_kind)[0])
        actual_label = int(targets[i].reshape(-1)[0])
        names = task.class_names or tuple(str(c) for c in range(max(label, actual_label) + 1))
        if task.kind == "binary":
            p = probabilities(outputs[i : i + 1], task, trained.scoring.output_kind).reshape(-1)[0].item()
            yield f"{prefix}Predicted: {names[label]} (p={p:.2f}), Actual: {names[actual_label]}"
        else:
            yield f'{prefix}Predicted: "{names[label]}", Actual: "{names[actual_label]}"'

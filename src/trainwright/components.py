"""Recipe -> components: data (and how to read new inputs for it), model, scoring (loss and metrics), optimizer,
scheduler.

The one place that registers the built-in components (by importing their modules) and checks a
recipe's component sections. No devices and no Accelerate here."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from trainwright.data.bundle import DataBundle, Task, TensorSplit
from trainwright.data.collate import COLLATE_ATTRIBUTE, Collate
from trainwright.data.folds import Fold, fold_of
from trainwright.data.input_batch import InputBatch
from trainwright.data.loading import require_stream
from trainwright.data.targets import check_bundle_targets
from trainwright.data.tasks import all_default_metrics, kind_of
from trainwright.data.val_splits import build_val_splits, check_monitor_name, check_val_splits, validation_names
from trainwright.errors import UserError

# Importing the models modules registers the built-ins.
from trainwright.models import builtin, classifier_metrics, losses, metrics, optim, parameters  # noqa: F401
from trainwright.models.pairing import check_pair
from trainwright.recipe import Recipe, StepConfig
from trainwright.registry import COLLATES, DATASETS, LOSSES, METRICS, MODELS, OPTIMIZERS, SCHEDULERS, STEPS, import_attr
from trainwright.step import MODEL_LOSS, DefaultStep, Step
from trainwright.training.callbacks import check_callbacks
from trainwright.training.evaluation import MetricFn, Scoring, StateMetricFn

InputReader = Callable[[Any, dict[str, Any], int], Iterator[InputBatch]]  # (source, data.json, batch size)

# The built-in data sets, imported when a recipe names them (pandas and torchvision load only then).
# `inputs`: how `predict --input` reads new inputs for a run of the data set (data/inputs.py).
# `check`: the argument values each refuses, checked by `trainwright check` without reading data.
_ARGUMENTS = "trainwright.data.arguments:check_data_arguments"
DATASETS.register_path(
    "heart", "trainwright.data.synthetic:heart", inputs="trainwright.data.inputs:heart_points", check=_ARGUMENTS
)
DATASETS.register_path(
    "linear", "trainwright.data.synthetic:linear", inputs="trainwright.data.inputs:line_points", check=_ARGUMENTS
)
DATASETS.register_path(
    "csv", "trainwright.data.tabular:csv", inputs="trainwright.data.inputs:table_rows", check=_ARGUMENTS
)
DATASETS.register_path(
    "fashion_mnist", "trainwright.data.vision:fashion_mnist", inputs="trainwright.data.images:fashion_images"
)
DATASETS.register_path("text", "trainwright.data.text:text", check=_ARGUMENTS)
DATASETS.register_path("instructions", "trainwright.data.instructions:instructions", check=_ARGUMENTS)
DATASETS.register_path("hf_dataset", "trainwright.data.hf_datasets:hf_dataset", check=_ARGUMENTS)
STEPS.register("default")(DefaultStep)
COLLATES.register_path("pad", "trainwright.data.collate:pad")
MODELS.register_path("gpt", "trainwright.models.gpt:gpt", check="trainwright.models.gpt:check_gpt_arguments")
# Hugging Face transformers models (the optional extra trainwright[hf]), imported when a recipe names them.
MODELS.register_path("hf", "trainwright.models.hf:hf")
DATASETS.register_path(
    "npy", "trainwright.data.arrays:npy", inputs="trainwright.data.arrays:array_rows", check=_ARGUMENTS
)
DATASETS.register_path(
    "image_folder", "trainwright.data.folders:image_folder", inputs="trainwright.data.folders:folder_images",
    check="trainwright.data.folders:check_arguments",
)
DATASETS.register_path(
    "shards", "trainwright.data.shards:shards", inputs="trainwright.data.shards:shard_inputs",
    check="trainwright.data.folders:check_arguments",
)


def check_recipe(recipe: Recipe) -> None:
    """Check that every component exists and takes the arguments given (no data is read)."""
    DATASETS.check(recipe.data.name, recipe.data.kwargs())
    check_val_splits(recipe, DATASETS.check)
    build_collate(recipe)
    MODELS.check(recipe.model.name, recipe.model.kwargs())
    check_pair(recipe)
    LOSSES.check(recipe.loss.name, recipe.loss.kwargs())
    step = recipe.step or StepConfig()
    _require_step_class(step.name)
    STEPS.check(step.name, step.kwargs())
    OPTIMIZERS.check(recipe.optimizer.name, recipe.optimizer.kwargs())
    SCHEDULERS.check(recipe.scheduler.name, recipe.scheduler.kwargs())
    for name in recipe.metrics or []:
        METRICS.get(name, key="metrics")
        if METRICS.meta(name).get("state"):
            classifier_metrics.require_torchmetrics(name)
    if recipe.adapter is not None:
        from trainwright.models.adapters import peft_config  # peft: only for recipes with an adapter

        peft_config(recipe.adapter)
    check_callbacks(recipe)
    # Without the data the task is unknown, so the default metric may be either; start-up checks it exactly.
    check_monitor(recipe, metric_names(recipe) if recipe.metrics is not None else all_default_metrics())


def metric_names(recipe: Recipe, task: Task | None = None) -> list[str]:
    """The names the run reports its metrics under ('pkg.mod:f1' reports as 'f1'), without 'val/'."""
    return [name.rpartition(":")[2] for name in _metric_choice(recipe, task)]


def _metric_choice(recipe: Recipe, task: Task | None) -> list[str]:
    """The recipe's metrics (`[]`: none, only the loss), or the task's default when it names none."""
    if recipe.metrics is not None:
        return list(recipe.metrics)
    if task is None:
        raise ValueError("the default metrics depend on the task: pass the data's task")
    return metrics.default_metrics(task)


def check_monitor(recipe: Recipe, names: list[str]) -> None:
    """checkpoint.monitor (or keep_best would keep nothing) and trainer.early_stopping.monitor (or it would
    never stop) must each be one of the metrics the run reports."""
    reported = validation_names(recipe, names)
    monitors = {"checkpoint.monitor": recipe.checkpoint.monitor}
    if recipe.trainer.early_stopping is not None:
        monitors["trainer.early_stopping.monitor"] = recipe.trainer.early_stopping.monitor
    for key, monitor in monitors.items():
        check_monitor_name(key, monitor, recipe, reported)


def build_data(recipe: Recipe) -> DataBundle:
    """The recipe's data set; with `cv.fold`, fold cv.fold validates and the other folds train (a builder
    that takes a `fold` argument splits its rows itself, see data/folds.py)."""
    fold = _fold(recipe)
    splits_itself = fold is not None and "fold" in inspect.signature(DATASETS.get(recipe.data.name)).parameters
    bundle = DATASETS.build(recipe.data.name, recipe.data.kwargs(), **({"fold": fold} if splits_itself else {}))
    if not isinstance(bundle, DataBundle):
        raise UserError(f"data.name: '{recipe.data.name}' returned {type(bundle).__name__}, not a DataBundle")
    for name, split in (("train", bundle.train), ("val", bundle.val), ("test", bundle.test)):
        if split is not None:
            require_stream(split, f"data set '{recipe.data.name}': its {name} split")
    check_bundle_targets(bundle, recipe.data.name)
    bundle = fold_of(bundle, fold) if fold is not None and not splits_itself else bundle
    bundle.val_splits = build_val_splits(recipe, bundle.task, _built)
    collate = build_collate(recipe)
    for split in (bundle.train, bundle.val, bundle.test, *bundle.val_splits.values()):
        if collate is not None and split is not None and not isinstance(split, TensorSplit):
            setattr(split, COLLATE_ATTRIBUTE, collate)  # read by data/loading.py's loaders
    return bundle


def _built(name: str, kwargs: dict[str, Any]) -> DataBundle:
    """A data set (a named validation split's), checked as build_data checks the recipe's."""
    bundle = DATASETS.build(name, kwargs)
    if not isinstance(bundle, DataBundle):
        raise UserError(f"data set '{name}' returned {type(bundle).__name__}, not a DataBundle")
    require_stream(bundle.val, f"data set '{name}': its val split")
    return bundle


def build_collate(recipe: Recipe) -> Collate | None:
    """`data.collate`: the function (with the section's keyword arguments) that makes a batch of items,
    None for the default (stacked)."""
    config = recipe.data.collate
    if config is None:
        return None
    function, kwargs = COLLATES.get(config.name), config.kwargs()
    try:
        inspect.signature(function).bind(None, **kwargs)
    except TypeError as exc:
        raise UserError(f"data.collate: '{config.name}' does not take {kwargs} ({exc}); it is called as "
                        "function(items, **arguments)") from None
    except ValueError:
        pass  # a builtin without a signature: it is called as it is
    return functools.partial(function, **kwargs) if kwargs else function


def _fold(recipe: Recipe) -> Fold | None:
    if recipe.cv is None:
        return None
    if recipe.cv.fold is None:
        raise UserError(
            f"cv.folds={recipe.cv.folds} but no cv.fold: set cv.fold (1..{recipe.cv.folds}) to train one fold, or run "
            "every fold with `trainwright cv`"
        )
    return Fold(recipe.cv.fold, recipe.cv.folds, recipe.seed, recipe.cv.stratify)


def input_reader(recipe: Recipe) -> InputReader:
    """How new inputs are read for a run of the recipe's data set (registered as `inputs=`: a function or
    an import path); a data set without one is a UserError."""
    reader = DATASETS.meta(recipe.data.name).get("inputs")
    if reader is None:
        raise UserError(
            f"data set '{recipe.data.name}' has no reader for new inputs (register one with "
            "DATASETS.register(name, inputs=...)); in Python, give the model's inputs as a tensor: "
            "trainwright.load_run(RUN_DIR).predict(tensor)"
        )
    return import_attr(reader, "data.name") if isinstance(reader, str) else reader


def seeded_model(recipe: Recipe, task: Task | None = None) -> nn.Module:
    """The recipe's model as training builds it (seeded by recipe.seed; the RNG state is kept as it was)."""
    from accelerate.utils import set_seed

    with torch.random.fork_rng(devices=[]):
        set_seed(recipe.seed)
        return build_model(recipe, task)


def build_model(recipe: Recipe, task: Task | None = None) -> nn.Module:
    """The recipe's model; for a sequence `task`, a model taking `vocab_size` that the recipe does not set
    gets the task's number of classes (a text data set's vocabulary is known only once it is read)."""
    kwargs = recipe.model.kwargs()
    sequence = task is not None and kind_of(task).per_position
    if task is not None and sequence and "vocab_size" not in kwargs and _takes(recipe.model.name, "vocab_size"):
        kwargs["vocab_size"] = len(task.class_names)
    model = MODELS.build(recipe.model.name, kwargs)
    if not isinstance(model, nn.Module):
        raise UserError(f"model.name: '{recipe.model.name}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _takes(model_name: str, argument: str) -> bool:
    try:
        return argument in inspect.signature(MODELS.get(model_name)).parameters
    except (TypeError, ValueError):
        return False


def _require_step_class(name: str) -> None:
    """step.name must name a Step (subclass): what the loops call is its methods."""
    builder = STEPS.get(name)
    if not (inspect.isclass(builder) and issubclass(builder, Step)):
        raise UserError(
            f"step.name: '{name}' is {getattr(builder, '__name__', type(builder).__name__)}, not a subclass of "
            "trainwright.step.Step (subclass it and override score(model, batch))"
        )


def build_scoring(recipe: Recipe, task: Task) -> Scoring:
    """The loss, what the model's outputs mean (from the loss; imported losses: by task), the metrics
    (the recipe's, or the task's default: accuracy for classifiers, MAE for regression, token accuracy and
    perplexity for sequence tasks) and the step that scores batches with them (built here, once)."""
    names = _metric_choice(recipe, task)
    shorts = metric_names(recipe, task)
    stateful = {short for name, short in zip(names, shorts) if METRICS.meta(name).get("state")}
    functions: dict[str, MetricFn] = {
        short: METRICS.get(name, key="metrics") for name, short in zip(names, shorts) if short not in stateful
    }
    states: dict[str, StateMetricFn] = {
        short: METRICS.get(name, key="metrics") for name, short in zip(names, shorts) if short in stateful
    }
    for name in states:
        classifier_metrics.check_task(name, task)
        classifier_metrics.require_torchmetrics(name)
    finish = {
        short: METRICS.meta(name)["finish"] for name, short in zip(names, shorts) if "finish" in METRICS.meta(name)
    }
    loss_fn, step = _loss(recipe, task), recipe.step or StepConfig()
    return Scoring(
        loss_fn=loss_fn,
        task=task,
        output_kind=LOSSES.meta(recipe.loss.name).get("output", kind_of(task).default_output),
        metrics=functions,
        finish=finish,
        states=states,
        step=STEPS.build(step.name, step.kwargs(), loss_fn=loss_fn, task=task),
    )


def _loss(recipe: Recipe, task: Task) -> nn.Module:
    """The recipe's loss; for sequence tasks over every position (losses.PerPosition), skipping the task's
    padding (its ignore_index, unless the recipe sets loss.ignore_index)."""
    kwargs = recipe.loss.kwargs()
    if not kind_of(task).per_position or recipe.loss.name == MODEL_LOSS:
        return LOSSES.build(recipe.loss.name, kwargs)
    try:
        takes_ignore = "ignore_index" in inspect.signature(LOSSES.get(recipe.loss.name)).parameters
    except (TypeError, ValueError):
        takes_ignore = False
    if takes_ignore:
        kwargs = {"ignore_index": task.ignore_index, **kwargs}
    return losses.PerPosition(LOSSES.build(recipe.loss.name, kwargs))


def adapt_model(recipe: Recipe, model: nn.Module) -> nn.Module:
    """The built model made ready for fine-tuning, before any parallel wrapping: model.freeze applied, the
    recipe's peft adapter put on it (adapters.py), and optimizer.groups checked against its parameter names
    (before anything is written)."""
    parameters.freeze(model, recipe.model.freeze)
    if recipe.adapter is not None:
        from trainwright.models.adapters import apply_adapter  # peft: only for recipes with an adapter

        model = apply_adapter(recipe.adapter, model)
    parameters.check_weight_decay(recipe.optimizer, OPTIMIZERS.get(recipe.optimizer.name))
    parameters.optimizer_groups(recipe.optimizer, model)
    return model


def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimizer over the parameters that train, in the groups of parameters.optimizer_groups."""
    return optimizer_over(recipe, parameters.optimizer_groups(recipe.optimizer, model))


def optimizer_over(recipe: Recipe, params: Any) -> torch.optim.Optimizer:
    """The recipe's optimizer over `params` (parameters, or groups of them)."""
    return OPTIMIZERS.build(recipe.optimizer.name, recipe.optimizer.kwargs(), params=params, lr=recipe.optimizer.lr)


def build_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer, total_steps: int) -> Any | None:
    return SCHEDULERS.build(
        recipe.scheduler.name, recipe.scheduler.kwargs(), optimizer=optimizer, total_steps=total_steps
    )

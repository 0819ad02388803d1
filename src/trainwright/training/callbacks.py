"""Callbacks (the recipe's `callbacks:`): your own `trainwright.Callback` subclasses, whose hooks run on
every process at fixed points of training with a read-only view of the run (`RunView`, over the
RunContext the trainer builds: run_context.py), through which they may also log metrics and ask the run to
stop. A callback's `state_dict()` (JSON) is saved in every
checkpoint (`callbacks.json`, the main process's) and given back to `load_state_dict` on every process
when a run resumes, on any process count and from full or sharded checkpoints.

The trainer holds a `Callbacks` only when the run has a callback (a user's, or a built-in one such as
trainer.profile); without one, the training step does no callback work at all."""

from __future__ import annotations

import inspect
import json
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from trainwright.errors import UserError
from trainwright.registry import Registry

_PACKAGE = Path(__file__).resolve().parent
T = TypeVar("T")

if TYPE_CHECKING:
    import torch

    from trainwright.recipe import Recipe
    from trainwright.training.run_context import RunContext


class Callback:
    """Base class of the recipe's `callbacks`: override the hooks you need (each does nothing here).

    Every hook runs on every process, in the order the recipe lists the callbacks, and gets `run`, a
    read-only view of the run (`RunView`) that can also `log` metrics and `request_stop`. The
    constructor's keyword arguments come from the recipe (`{name: my_pkg.cb:Counter, every: 5}`) and are
    checked against its signature at start-up. A hook that raises ends the run with one message naming the
    callback and the hook; the newest checkpoint is kept."""

    def on_fit_start(self, run: RunView) -> None:
        """Training starts, or resumes (then `run.step` is the checkpoint's and `load_state_dict` was called)."""

    def on_step_end(self, run: RunView) -> None:
        """After every optimizer step (and the LR scheduler's step); `run.step` counts it. The step's
        gradients are still on the parameters (`p.grad`, reduced over the processes), cleared right after."""

    def on_validation_end(self, run: RunView, metrics: Mapping[str, float]) -> None:
        """After every validation, with its metrics (`val/loss`, `val/accuracy`, ...: the same on every process)."""

    def on_checkpoint_saved(self, run: RunView, folder: Path) -> None:
        """After a checkpoint is complete on disk in `folder` (a run with this hook waits for each
        checkpoint's background write)."""

    def on_fit_end(self, run: RunView) -> None:
        """Training ended, completed or stopped (by a signal) to be resumed, after its last checkpoint
        (a completed run writes its final weights after this)."""

    def state_dict(self) -> dict[str, Any]:
        """What this callback keeps across a resume: a mapping JSON can hold (tuples come back as lists,
        keys as strings). Called on the main process at every checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (on every process, when a run resumes)."""


class _RunField(Generic[T]):
    """A read-only attribute of RunView: `path` (dotted) read from the run's context at each access."""

    def __init__(self, path: str, doc: str) -> None:
        self._get = attrgetter(path)
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, view: None, owner: type) -> _RunField[T]: ...
    @overload
    def __get__(self, view: RunView, owner: type | None = None) -> T: ...
    def __get__(self, view: RunView | None, owner: type | None = None) -> T | _RunField[T]:
        return self if view is None else self._get(view._run)  # on the class: the field (help(), docs)

    def __set__(self, view: RunView, value: object) -> None:
        raise AttributeError(f"RunView.{self._name} is read-only: a callback changes nothing of the run through it")


class RunView:
    """What a callback sees of the run (read-only: change nothing through it) and the two things it may do:
    `log` metrics and `request_stop`."""

    step: _RunField[int] = _RunField("state.step", "Optimizer steps done.")
    epoch: _RunField[int] = _RunField("state.epoch", "Epochs done.")
    batch_in_epoch: _RunField[int] = _RunField(
        "state.batch_in_epoch", "Batches (of data.batch_size, all processes together) of the current epoch trained on.")
    samples_seen: _RunField[int] = _RunField("state.samples_seen", "Training items seen (all processes together).")
    total_steps: _RunField[int] = _RunField(
        "total_steps", "Optimizer steps of the whole run (`trainer.epochs`, capped by `trainer.max_steps`).")
    steps_per_epoch: _RunField[int] = _RunField("steps_per_epoch", "Optimizer steps an epoch.")
    rank: _RunField[int] = _RunField("processes.rank", "This process's rank (0 to world_size - 1).")
    world_size: _RunField[int] = _RunField("processes.world_size", "How many processes train.")
    is_main: _RunField[bool] = _RunField(
        "processes.is_main", "Whether this is the process that writes the run's files and prints (rank 0).")
    model: _RunField[torch.nn.Module] = _RunField(
        "model", "The model (unwrapped from DDP; under fsdp its parameters are this process's shards, DTensors).")
    optimizer: _RunField[torch.optim.Optimizer] = _RunField("optimizer", "The optimizer.")
    run_dir: _RunField[Path] = _RunField("run_dir", "The run dir.")

    def __init__(self, context: RunContext, callback: str) -> None:
        self._run = context
        self._callback = callback

    @property
    def val_metrics(self) -> Mapping[str, float]:
        """The latest validation's metrics (`val/loss`, ...; empty before the first)."""
        return MappingProxyType(self._run.state.val_metrics)

    @property
    def lr(self) -> float:
        """The learning rate of the optimizer's first parameter group."""
        return self._run.optimizer.param_groups[0]["lr"]

    def log(self, metrics: Mapping[str, float]) -> None:
        """Record `metrics` (name -> number, or a one-element tensor) at the current step: metrics.jsonl,
        W&B and TensorBoard, as the run's own metrics. Only the main process records: values logged on
        the others are dropped (reduce them over the processes first if they differ). `step` and `epoch`
        are each record's own keys, not names to log under."""
        self._run.log(metrics)

    def request_stop(self, reason: str) -> None:
        """Ask the run to end as completed (validation, checkpoint, final weights, exit 0) with `reason`.
        The processes take it at the same step, as they do a stop signal (one process: after the step that
        asked, or the next one when asked in on_fit_start or on_checkpoint_saved); one process asking is
        enough, and the first request counts."""
        self._run.request_stop(self._callback, reason)


@dataclass(frozen=True)
class Named:
    """A callback and how the run knows it."""

    callback: Callback
    label: str  # in messages: its class name (the built-ins: their recipe key, e.g. trainer.profile)
    key: str | None = None  # its recipe name (import path), its state's key in callbacks.json; None: a built-in


def _where(exc: BaseException) -> str:
    """' (file:line)' of the innermost frame of the raise outside trainwright (the callback's own code), else
    the innermost one."""
    frames = traceback.extract_tb(exc.__traceback__)[1:]  # below Callbacks._call
    outside = [frame for frame in frames if not Path(frame.filename).is_relative_to(_PACKAGE)]
    chosen = outside or frames
    return f" ({chosen[-1].filename}:{chosen[-1].lineno})" if chosen else ""


def _overrides(callback: Callback, hook: str) -> bool:
    return getattr(type(callback), hook) is not getattr(Callback, hook)


class Callbacks:
    """The run's callbacks, called through here: a hook that raises is one UserError naming the callback
    and the hook."""

    def __init__(self, named: list[Named], context: RunContext) -> None:
        self._run = context
        self._views = [(entry, RunView(context, entry.label)) for entry in named]
        self._saved = [entry for entry in named if entry.key is not None]
        self._step_enders = [(entry, view) for entry, view in self._views if _overrides(entry.callback, "on_step_end")]
        self.watches_checkpoints = any(_overrides(entry.callback, "on_checkpoint_saved") for entry in named)

    @property
    def step_end(self) -> Callable[[], None] | None:
        """`on_step_end` of every callback that has one, or None when none has (the loop then calls nothing)."""
        return self._step_end if self._step_enders else None

    def fit_start(self) -> None:
        self._each("on_fit_start")

    def _step_end(self) -> None:
        for entry, view in self._step_enders:
            self._call(entry, "on_step_end", entry.callback.on_step_end, view)

    def validation_end(self, metrics: dict[str, float]) -> None:
        self._each("on_validation_end", MappingProxyType(dict(metrics)))

    def checkpoint_saved(self, folder: Path) -> None:
        self._each("on_checkpoint_saved", folder)

    def fit_end(self) -> None:
        self._each("on_fit_end")

    def _each(self, hook: str, *args: Any) -> None:
        for entry, view in self._views:
            self._call(entry, hook, getattr(entry.callback, hook), view, *args)

    def _call(self, entry: Named, hook: str, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except UserError:  # already one message (e.g. metrics.jsonl cannot be written)
            raise
        except SystemExit as exc:  # sys.exit() in a hook is a failure too (run.request_stop ends a run)
            raise self._failed(entry, hook, f"it called sys.exit({exc.code!r}){_where(exc)}; to end the run as "
                                "completed, call run.request_stop(reason)") from None
        except Exception as exc:
            raise self._failed(entry, hook, f"{type(exc).__name__}: {exc}{_where(exc)}") from None

    def _failed(self, entry: Named, hook: str, problem: str) -> UserError:
        name = f"{entry.label} ({entry.key})" if entry.key else entry.label
        return UserError(
            f"callback {name} failed in {hook} at step {self._run.state.step}: {problem}; {self._run.checkpoint_kept()}"
        )

    # --- state in checkpoints --------------------------------------------------------------------

    @property
    def keeps_state(self) -> bool:
        """Whether checkpoints hold callbacks.json (the recipe has callbacks of its own)."""
        return bool(self._saved)

    def states(self) -> dict[str, Any]:
        """callbacks.json: each of the recipe's callbacks by its recipe name, with its state_dict (a copy)."""
        states = []
        for entry in self._saved:
            state = self._call(entry, "state_dict", entry.callback.state_dict)
            if not isinstance(state, Mapping):
                raise self._failed(entry, "state_dict", f"it returned {type(state).__name__}, not a mapping")
            try:
                copy = json.loads(json.dumps(state))
            except (TypeError, ValueError) as exc:
                raise self._failed(entry, "state_dict", f"its state is not JSON data ({exc})") from None
            states.append({"name": entry.key, "state": copy})
        return {"callbacks": states}

    def load(self, saved: dict[str, Any], folder: Path) -> None:
        """Give each callback its state from a checkpoint's callbacks.json (checked against its schema)."""
        names, keys = [item["name"] for item in saved["callbacks"]], [entry.key for entry in self._saved]
        if names != keys:
            raise UserError(
                f"checkpoint {folder} holds the states of callbacks {names}, and this recipe has {keys}; resume "
                "with the callbacks it was trained with, or start over with --restart (the old run is kept)"
            )
        for entry, item in zip(self._saved, saved["callbacks"]):
            self._call(entry, "load_state_dict", entry.callback.load_state_dict, item["state"])


# --- from the recipe -------------------------------------------------------------------------------


def _registry(index: int) -> Registry:
    """A registry of no built-ins for `callbacks[index]`, so its messages name that item."""
    return Registry("callback", f"callbacks[{index}]")


def _builder(index: int, name: str) -> Callable[..., Any]:
    if ":" not in name:
        raise UserError(
            f"callbacks[{index}].name: '{name}' is not an import path; give 'package.module:Class' (a subclass "
            "of trainwright.Callback), importable from PYTHONPATH"
        )
    builder = _registry(index).get(name)
    if not inspect.isclass(builder):  # refused before anything calls it (os:system is a function)
        raise UserError(
            f"callbacks[{index}].name: {name} is a {type(builder).__name__}, not a class; give a subclass of "
            "trainwright.Callback ('package.module:Class')"
        )
    if not issubclass(builder, Callback):
        raise UserError(f"callbacks[{index}].name: {name} is not a subclass of trainwright.Callback")
    return builder


def check_callbacks(recipe: Recipe) -> None:
    """Every callback imports, is a trainwright.Callback and takes the arguments given (nothing is built)."""
    for index, config in enumerate(recipe.callbacks or []):
        _builder(index, config.name)
        _registry(index).check(config.name, config.kwargs())


def build_callbacks(recipe: Recipe) -> list[Named]:
    """The recipe's callbacks, built with their arguments (checked by `check_callbacks`)."""
    built = []
    for index, config in enumerate(recipe.callbacks or []):
        _builder(index, config.name)
        callback = _registry(index).build(config.name, config.kwargs())
        built.append(Named(callback, type(callback).__name__, config.name))
    return built

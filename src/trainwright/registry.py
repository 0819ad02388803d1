"""Component registries: a recipe names a component (or gives an import path) plus keyword arguments.

This module imports nothing of trainwright's components: the built-ins register themselves when
`trainwright.components` imports them."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from trainwright.errors import UserError, did_you_mean


class Registry:
    """Named builders of one kind of component (datasets, models, losses, ...)."""

    def __init__(self, kind: str, section: str, provided: tuple[str, ...] = (), reserved: tuple[str, ...] = (),
                 section_keys: tuple[str, ...] = (), own_keys: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.section = section
        self.provided = set(provided)  # arguments trainwright passes itself (e.g. an optimizer's params)
        self.section_keys = section_keys  # ... of those, the ones the recipe section gives (an optimizer's lr)
        self.own_keys = own_keys  # keys of the section that trainwright reads itself (model.freeze)
        self.reserved = set(provided) | set(reserved)  # ... and those it may pass (never set in a recipe)
        self._entries: dict[str, Callable[..., Any]] = {}
        self._paths: dict[str, str] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self.adapt: Callable[[Callable[..., Any]], Callable[..., Any]] = _as_it_is  # what an import path names

    def register(self, name: str, **meta: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: make `fn` available to recipes as `name`."""

        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._entries[name] = fn
            self._meta[name] = meta
            return fn

        return add

    def register_path(self, name: str, path: str, **meta: Any) -> None:
        """Make the builder at import path 'package.module:attr' available as `name`, imported on first use
        (so a run imports only the components it uses)."""
        self._paths[name] = path
        self._meta[name] = meta

    def names(self) -> list[str]:
        return sorted({*self._entries, *self._paths})

    def meta(self, name: str) -> dict[str, Any]:
        """Extra facts registered with a built-in component ({} for imported ones)."""
        return self._meta.get(name, {})

    def get(self, name: str, key: str | None = None) -> Callable[..., Any]:
        """The builder for `name`: a registered name or 'package.module:attr' (`key`: the recipe key, for errors)."""
        key = key or f"{self.section}.name"
        if name in self._entries:
            return self._entries[name]
        if name in self._paths:
            self._entries[name] = import_attr(self._paths[name], key)
            return self._entries[name]
        if ":" in name:
            return self.adapt(import_attr(name, key))
        raise UserError(
            f"{key}: unknown {self.kind} '{name}'{did_you_mean(name, self.names())} "
            f"(built in: {', '.join(self.names())}; or an import path 'package.module:attr')"
        )

    def check(self, name: str, kwargs: dict[str, Any]) -> None:
        """Fail early, naming the key, when `kwargs` holds an argument the component does not take, or (for a
        built-in registered with `check=`: a function of the kwargs, or its import path) a value its builder
        refuses: the builder calls the same function, so `trainwright check` refuses what `train` does."""
        self._check_signature(name, kwargs)
        values = self.meta(name).get("check")
        if values is not None:
            (import_attr(values, f"{self.section}.name") if isinstance(values, str) else values)(kwargs)

    def _check_signature(self, name: str, kwargs: dict[str, Any]) -> None:
        builder = self.get(name)
        try:
            params = inspect.signature(builder).parameters
        except (TypeError, ValueError):
            return
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        not_taken = sorted(self.provided - set(params))
        if not_taken:
            raise UserError(
                f"{self.section}.name: {self.kind} '{name}' must take the argument(s) {', '.join(not_taken)}, "
                "which trainwright passes; wrap it in a function that does"
            )
        accepted = [n for n in params if n not in self.reserved and n != "self"]
        offered = [*self.section_keys, *accepted, *self.own_keys]  # what the section may hold besides the name
        for key in kwargs:
            if key not in accepted:
                raise UserError(
                    f"{self.section}.{key}: unknown argument for {self.kind} '{name}'{did_you_mean(key, offered)} "
                    f"(it takes: {', '.join(offered) or 'no arguments'})"
                )
        missing = [
            n
            for n, p in params.items()
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and n not in self.reserved
            and n not in kwargs
        ]
        if missing:
            raise UserError(
                f"{self.section}: {self.kind} '{name}' needs {', '.join(self.section + '.' + m for m in missing)}"
            )
        hints = _type_hints(builder)
        for key, value in kwargs.items():
            problem = _type_problem(hints.get(key), value)
            if problem:
                raise UserError(
                    f"{self.section}.{key}: {problem} (got {value!r}; {self.kind} '{name}' takes {_show(hints[key])})"
                )

    def build(self, name: str, kwargs: dict[str, Any], **provided: Any) -> Any:
        """Call the builder (its arguments were checked with `check`); an argument annotated `pathlib.Path`
        arrives as a Path; bad argument values become a UserError."""
        builder = self.get(name)
        hints = _type_hints(builder)
        kwargs = {
            key: Path(value) if isinstance(value, str) and is_path_annotation(hints.get(key)) else value
            for key, value in kwargs.items()
        }
        try:
            return builder(**provided, **kwargs)
        except (TypeError, ValueError, RuntimeError) as exc:  # torch raises RuntimeError for impossible shapes
            raise UserError(f"{self.section}: cannot build {self.kind} '{name}' from {kwargs}: {exc}") from None


def _as_it_is(builder: Callable[..., Any]) -> Callable[..., Any]:
    return builder


def _type_hints(builder: Callable[..., Any]) -> dict[str, Any]:
    """The builder's parameter annotations as types ({} where they cannot be resolved)."""
    target = builder.__init__ if inspect.isclass(builder) else builder
    try:
        return typing.get_type_hints(target)
    except Exception:  # annotations naming what cannot be imported here: nothing to check against
        return {}


def is_path_annotation(annotation: Any) -> bool:
    """`Path`, `os.PathLike` (or a subclass), or an optional or union of one (`Path | None`)."""
    if isinstance(annotation, type):
        return issubclass(annotation, (PurePath, os.PathLike))
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and any(
        is_path_annotation(arg) for arg in typing.get_args(annotation)
    )


_ANY_TYPE = ConfigDict(arbitrary_types_allowed=True)  # e.g. `float | torch.Tensor` (a recipe gives the float)


def _type_problem(annotation: Any, value: Any) -> str | None:
    """Why `value` (from YAML) does not fit `annotation`, or None. Strict, as values are written in the
    recipe: `true` is not an int, `64.0` is not an int, `'1e-5'` is not a float; lists stand for tuples."""
    if annotation is None or annotation is Any:
        return None
    try:
        adapter = TypeAdapter(annotation, config=_ANY_TYPE)
        adapter.validate_json(json.dumps(value), strict=True)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = "".join(f"[{part}]" for part in error["loc"] if isinstance(part, int))
        return f"item {where}: {error['msg']}" if where else error["msg"]
    except Exception:  # an annotation pydantic cannot check, or a value JSON cannot hold: leave it to the builder
        return None
    return None


def _show(annotation: Any) -> str:
    """`int`, `list[int]`, `float | torch.Tensor`: an annotation as it is written."""
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def import_attr(path: str, key: str) -> Callable[..., Any]:
    """The attribute at 'package.module:attr'; a path that cannot be imported is a UserError naming `key`."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"{key}: cannot import module '{module_name}' ({exc}); is it on PYTHONPATH?") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        public = [n for n in dir(module) if not n.startswith("_")]
        raise UserError(f"{key}: module '{module_name}' has no '{attr}'{did_you_mean(attr, public)}") from None


DATASETS = Registry("data set", "data", reserved=("fold",))  # fold: data/folds.py
MODELS = Registry("model", "model", own_keys=("freeze",))
LOSSES = Registry("loss", "loss")
OPTIMIZERS = Registry("optimizer", "optimizer", provided=("params", "lr"), section_keys=("lr",),
                      own_keys=("groups", "no_decay"))
SCHEDULERS = Registry("LR scheduler", "scheduler", provided=("optimizer", "total_steps"))
METRICS = Registry("metric", "metrics")
COLLATES = Registry("collate function", "data.collate")  # data/collate.py: items -> a batch
STEPS = Registry("step", "step", provided=("loss_fn", "task"))  # step.py: built with the scoring's loss and task


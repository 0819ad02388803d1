"""What a checkpoint must hold to load into the live objects of a run, checked from the files' headers and
JSON before anything is loaded: every tensor's name, shape and dtype, and the kind of every optimizer,
scheduler and grad-scaler value. (A load would otherwise cast a tensor of another dtype and train on as if
it were right, or fail half-way with a TypeError.)

The optimizer's state is what the live optimizer holds after a dry initialisation, the one torch's
distributed checkpoint does before it loads optimizer state: a step with zero gradients at a zero learning
rate. So the rule is the optimizer's own, not a table per optimizer: each parameter's state names, each
state tensor's shape and dtype (Adam's `exp_avg` and SGD's `momentum_buffer` have their parameter's shape
and dtype, `step` is a float32 scalar) and the kind of each other value. A checkpoint may hold no state for
a parameter (one that never had a gradient), or exactly that state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainwright.checkpoint.format import (
    EMA_FILE,
    OPTIMIZER_TENSORS,
    SHARDED_EMA_DIR,
    SHARDED_MODEL_DIR,
    SHARDED_OPTIMIZER_DIR,
    is_sharded,
)
from trainwright.checkpoint.objects import TrainObjects, model_state
from trainwright.checkpoint.safetensors_header import read_header
from trainwright.checkpoint.shard_files import whole_tensors
from trainwright.checkpoint.ties import state_dict_name, tied_aliases, untied

DTYPE_NAMES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.uint16: "U16",
    torch.int32: "I32", torch.uint32: "U32", torch.int64: "I64", torch.uint64: "U64", torch.float16: "F16",
    torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64", torch.complex64: "C64",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


@dataclass(frozen=True)
class Spec:
    """A tensor's dtype (safetensors' name) and whole shape."""

    dtype: str
    shape: tuple[int, ...]

    @classmethod
    def of(cls, tensor: torch.Tensor) -> Spec:
        return cls(DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype)), tuple(tensor.shape))  # a DTensor's: global

    def __str__(self) -> str:
        return f"{self.dtype} {list(self.shape)}"


def specs(tensors: Mapping[str, torch.Tensor]) -> dict[str, Spec]:
    return {name: Spec.of(tensor) for name, tensor in tensors.items()}


def file_specs(path: Path) -> dict[str, Spec]:
    """The tensors of a safetensors file as its (checked) header gives them."""
    return {name: Spec(entry.dtype, entry.shape) for name, entry in read_header(path).tensors.items()}


def tensors_problem(
    what: str, found: Mapping[str, Spec], expected: Mapping[str, Spec], owner: str = "the model"
) -> str | None:
    """Why the tensors `found` in `what` are not exactly `expected` (names, shapes and dtypes), or None."""
    missing = sorted(set(expected) - set(found))
    if missing:
        more = f" (and {len(missing) - 1} more)" if missing[1:] else ""
        return f"{what} lacks the tensor {missing[0]!r} of {owner}{more}"
    extra = sorted(set(found) - set(expected))
    if extra:
        return f"{what} holds a tensor {extra[0]!r} that {owner} does not have"
    for name, spec in expected.items():
        if found[name] != spec:
            return f"{what}: tensor {name!r} is {found[name]}, where {owner} has {spec}"
    return None


def kind_problem(saved: Any, live: Any) -> str | None:
    """Why the JSON value `saved` cannot stand for the live value `live` (its kind: a number, a string, a
    flag, a list or mapping of such; a finite number where the live one is finite), or None. A live None
    may be anything (a scheduler's unset value)."""
    if live is None or isinstance(live, torch.Tensor):
        return None
    if isinstance(live, (bool, str)):
        return None if type(saved) is type(live) else f"is {saved!r:.40}, not a {type(live).__name__}"
    if isinstance(live, (int, float)):
        wanted = (int,) if isinstance(live, int) else (int, float)
        if isinstance(saved, bool) or not isinstance(saved, wanted):
            return f"is {saved!r:.40}, not {'an integer' if isinstance(live, int) else 'a number'}"
        return None if math.isfinite(saved) or not math.isfinite(live) else f"is {saved}, not a finite number"
    if isinstance(live, (list, tuple)):
        if not isinstance(saved, list) or len(saved) != len(live):
            return f"is {saved!r:.40}, not a list of {len(live)}"
        return next((f"[{i}] {p}" for i, (s, v) in enumerate(zip(saved, live)) if (p := kind_problem(s, v))), None)
    if isinstance(live, Mapping):
        keys = {str(key): value for key, value in live.items()}
        if not isinstance(saved, dict) or set(saved) != set(keys):
            return f"is {saved!r:.40}, not a mapping of {sorted(keys)}"
        return next((f"[{k!r}] {p}" for k, v in keys.items() if (p := kind_problem(saved[k], v))), None)
    return None


def plain_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside Accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the order of the optimizer's param groups: name i is index i of a full optimizer file."""
    names = {param: state_dict_name(name) for name, param in model.named_parameters()}
    return [names[param] for group in optimizer.param_groups for param in group["params"]]


def dry_init(optimizer: torch.optim.Optimizer) -> None:
    """Give a fresh optimizer its state as torch.distributed.checkpoint does (`_init_optim_state`): one step
    with zero gradients and a zero learning rate. The weights do not move; a load replaces the state."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if optimizer.state or any(p.grad is not None for p in params):
        return
    for param in params:
        if param.requires_grad:
            param.grad = torch.zeros_like(param)
    rates = [group.get("lr") for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        if "lr" in group:
            group["lr"] = torch.tensor(0.0) if isinstance(group["lr"], torch.Tensor) else 0.0
    optimizer.step()
    for group, rate in zip(optimizer.param_groups, rates):
        if rate is not None:
            group["lr"] = rate
    optimizer.zero_grad(set_to_none=True)


@dataclass(frozen=True)
class Expected:
    """The names, shapes and dtypes of the live objects' tensors, and their other values, as a load needs them."""

    model: dict[str, Spec]  # state-dict names (a tied parameter once)
    names: list[str]  # the optimizer's parameters (index i) by state-dict name
    state: list[dict[str, Any]]  # per parameter: state name -> Spec (a tensor) or the value (anything else)
    groups: list[dict[str, Any]]  # the live param groups, 'params' as indices
    ema: dict[str, Spec] | None
    json_states: dict[str, Any]  # scheduler.json, scaler.json: the live objects' state_dicts (None: none)

    @classmethod
    def of(cls, objects: TrainObjects) -> Expected:
        """Read the live objects (the optimizer is dry-initialised first; see `dry_init`)."""
        optimizer = plain_optimizer(objects.optimizer)
        dry_init(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        state = [
            {k: Spec.of(v) if isinstance(v, torch.Tensor) else v for k, v in optimizer.state.get(p, {}).items()}
            for p in params
        ]
        groups, start = [], 0
        for group in optimizer.param_groups:
            groups.append({**group, "params": list(range(start, start + len(group["params"])))})
            start += len(group["params"])
        return cls(
            specs(model_state(objects)),  # with trained_only (an adapter), without the frozen base
            param_names(objects.model, optimizer), state, groups,
            specs(objects.ema.tensors()) if objects.ema is not None else None,
            {"scheduler.json": objects.scheduler.state_dict() if objects.scheduler else None,
             "scaler.json": objects.scaler.state_dict() if objects.scaler else None},
        )

    def problem(self, folder: Path) -> str | None:
        """Why the verified checkpoint `folder` does not fit the live objects, or None."""
        if is_sharded(folder):
            found = {k: Spec(*v) for k, v in whole_tensors(folder / SHARDED_MODEL_DIR).items()}
            problem = tensors_problem(f"{SHARDED_MODEL_DIR}/", found, self.model)
            problem = problem or self._sharded_optimizer_problem(folder)
            ema = folder / SHARDED_EMA_DIR
            if not problem and self.ema is not None and ema.is_dir():
                found = {k: Spec(*v) for k, v in whole_tensors(ema).items()}
                problem = tensors_problem(f"{SHARDED_EMA_DIR}/", found, self.ema, "the averaged weights")
        else:
            problem = tensors_problem("model.safetensors", file_specs(folder / "model.safetensors"), self.model)
            problem = problem or self._full_optimizer_problem(folder)
            if not problem and self.ema is not None and (folder / EMA_FILE).is_file():
                problem = tensors_problem(EMA_FILE, file_specs(folder / EMA_FILE), self.ema, "the averaged weights")
        return problem or self._json_states_problem(folder)

    def _full_optimizer_problem(self, folder: Path) -> str | None:
        """optimizer.safetensors ('<index>.<name>') and optimizer.json (groups, other values by index)."""
        meta = json.loads((folder / "optimizer.json").read_text())
        saved_groups = meta["param_groups"]
        if len(saved_groups) != len(self.groups):
            return f"optimizer.json has {len(saved_groups)} parameter groups, the optimizer {len(self.groups)}"
        for number, (saved, live) in enumerate(zip(saved_groups, self.groups)):
            if saved["params"] != live["params"]:
                return (f"optimizer.json: parameter group {number} holds parameters {saved['params']}, "
                        f"the optimizer {live['params']}")
            if problem := _group_problem(saved, live, f"optimizer.json: parameter group {number}"):
                return problem
        found: dict[int, dict[str, Any]] = {}
        for key, spec in file_specs(folder / "optimizer.safetensors").items():
            param, name = key.split(".", 1)
            found.setdefault(int(param), {})[name] = spec
        for param, scalars in meta["scalars"].items():
            found.setdefault(int(param), {}).update(scalars)
        for index, values in found.items():
            if problem := self._param_state_problem(index, values, "optimizer"):
                return problem
        return None

    def _sharded_optimizer_problem(self, folder: Path) -> str | None:
        """optimizer/ ('state.<name>.<state>' tensors) and optimizer.json ('param_groups.<name>.<key>' and
        'state.<name>.<state>' values), torch's flattened optimizer state dict."""
        saved = json.loads((folder / "optimizer.json").read_text())
        tensors = {k: Spec(*v) for k, v in whole_tensors(folder / SHARDED_OPTIMIZER_DIR).items()}
        keys = {}
        for index, name in enumerate(self.names):
            keys.update({f"state.{name}.{state}": (index, state) for state in self.state[index]})
        found: dict[int, dict[str, Any]] = {}
        for key, value in [*tensors.items(), *((k, v) for k, v in saved.items() if k.startswith("state."))]:
            if key not in keys:
                return f"{SHARDED_OPTIMIZER_DIR}/ or optimizer.json holds {key!r}, which the optimizer does not keep"
            index, state = keys[key]
            found.setdefault(index, {})[state] = value
        for index, values in found.items():
            if problem := self._param_state_problem(index, values, f"{SHARDED_OPTIMIZER_DIR}/"):
                return problem
        groups = {f"param_groups.{self.names[i]}.{k}": v for g in self.groups for i in g["params"] for k, v in g.items()
                  if k != "params"}
        saved_groups = {k: v for k, v in saved.items() if not k.startswith("state.") and k != OPTIMIZER_TENSORS}
        if set(saved_groups) != set(groups):
            odd = min(set(saved_groups) ^ set(groups))
            return f"optimizer.json {'lacks' if odd in groups else 'holds'} {odd!r}, unlike the optimizer's groups"
        problems = (f"optimizer.json: {k!r} {p}" for k, v in groups.items() if (p := kind_problem(saved_groups[k], v)))
        return next(problems, None)

    def _param_state_problem(self, index: int, values: dict[str, Any], where: str) -> str | None:
        """One parameter's saved state (Specs for tensors, values for the rest) against the live optimizer's."""
        live = self.state[index]
        what = f"{where} state of parameter {index} ({self.names[index]!r})"
        if set(values) != set(live):
            return f"{what} holds {sorted(values)}, the optimizer keeps {sorted(live)}"
        for name, value in values.items():
            wanted = live[name]
            if isinstance(wanted, Spec) != isinstance(value, Spec):
                shown = "a tensor" if isinstance(value, Spec) else repr(value)[:40]
                return f"{what}: {name!r} is {shown}, unlike the optimizer's"
            if isinstance(wanted, Spec) and value != wanted:
                return f"{what}: {name!r} is {value}, where the optimizer has {wanted}"
            if not isinstance(wanted, Spec) and (problem := kind_problem(value, wanted)):
                return f"{what}: {name!r} {problem}"
        return None

    def _json_states_problem(self, folder: Path) -> str | None:
        for name, live in self.json_states.items():
            saved = json.loads((folder / name).read_text())
            if live is not None and saved is not None and (problem := kind_problem(saved, live)):
                return f"{name} {problem}"
        return None


def _group_problem(saved: dict[str, Any], live: dict[str, Any], where: str) -> str | None:
    """A saved param group's values against the live group's: each of its keys the optimizer's, of the same
    kind (keys it lacks are torch's to default)."""
    for key, value in saved.items():
        if key == "params":
            continue
        if key not in live:
            return f"{where} has {key!r}, which the optimizer's groups do not"
        if problem := kind_problem(value, live[key]):
            return f"{where}: {key!r} {problem}"
    return None


def weights_problem(weights: Mapping[str, torch.Tensor], model: nn.Module, what: str) -> str | None:
    """Why `weights` (a whole state dict as trainwright writes it: a tied parameter once) cannot be loaded
    into `model`: a tensor missing, extra, of another shape or dtype, or not finite; or None."""
    problem = tensors_problem(what, specs(weights), specs(untied(model.state_dict(), tied_aliases(model))))
    if problem:
        return problem
    bad = next((k for k, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    return f"{what}: tensor {bad!r} holds NaN or infinite values" if bad else None

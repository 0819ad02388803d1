"""How big a model is: its parameters (all and trainable), their bytes and its top-level modules' shares.

Counts are of the whole model on every process: a parameter sharded by FSDP2 (a DTensor) counts with its
global shape, and a parameter shared by two modules (tied weights) counts once."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

MAX_ROWS = 12  # top-level modules shown in the printed table; summary.json lists them all


def _class_name(module: nn.Module) -> str:
    """The module's own class name (FSDP2's `FSDPLinear` is a `Linear`)."""
    for cls in type(module).__mro__:
        if not any(base.__name__ == "FSDPModule" for base in cls.__mro__):
            return cls.__name__
    return type(module).__name__


def _count(parameters: list[nn.Parameter]) -> dict[str, int]:
    total = trainable = total_bytes = trainable_bytes = 0
    for parameter in parameters:
        numel = math.prod(parameter.shape)  # the global shape of a sharded (DTensor) parameter
        size = numel * parameter.element_size()
        total, total_bytes = total + numel, total_bytes + size
        if parameter.requires_grad:
            trainable, trainable_bytes = trainable + numel, trainable_bytes + size
    return {"parameters": total, "trainable": trainable, "bytes": total_bytes, "trainable_bytes": trainable_bytes}


def summarize(model: nn.Module) -> dict[str, Any]:
    """{model (its class), parameters, trainable, bytes, trainable_bytes, modules: [{name, type, parameters,
    trainable}]}; the modules are the top-level children that hold parameters (and `(own)` for parameters of
    the model itself), each parameter counted under the first module that holds it."""
    seen: set[int] = set()
    modules = []
    groups = [(name, _class_name(module), list(module.parameters())) for name, module in model.named_children()]
    groups.append(("(own)", _class_name(model), list(model.parameters(recurse=False))))
    for name, kind, parameters in groups:
        fresh = [p for p in parameters if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        if fresh:  # modules holding no parameters (activations, dropout) are left out
            counts = _count(fresh)
            modules.append(
                {"name": name, "type": kind, "parameters": counts["parameters"], "trainable": counts["trainable"]}
            )
    return {"model": _class_name(model), **_count(list(model.parameters())), "modules": modules}


def size(count: float) -> str:
    """Bytes as a short human size (1.2 MB)."""
    if count < 1000:
        return f"{count:.0f} B"
    for unit in ("kB", "MB", "GB"):
        count /= 1000
        if count < 1000 or unit == "GB":
            break
    return f"{count:.1f} {unit}"


def table(summary: dict[str, Any]) -> str:
    """A few lines for the start of a run: the totals, then one row per top-level module."""
    head = (
        f"Model {summary['model']}: {summary['parameters']:,} parameters ({size(summary['bytes'])}), "
        f"{summary['trainable']:,} trainable ({size(summary['trainable_bytes'])})"
    )
    modules = summary["modules"]
    if not modules:
        return head
    rows = [("module", "type", "parameters", "trainable")]
    rows += [(m["name"], m["type"], f"{m['parameters']:,}", f"{m['trainable']:,}") for m in modules[:MAX_ROWS]]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [head] + [
        f"  {row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}" for row in rows
    ]
    if len(modules) > MAX_ROWS:
        rest = modules[MAX_ROWS:]
        lines.append(f"  ... {len(rest)} more modules, {sum(m['parameters'] for m in rest):,} parameters")
    return "\n".join(lines)


def report(model: nn.Module, is_main: bool) -> dict[str, Any]:
    """The model's summary; the main process prints its table (at the start of a run)."""
    summary = summarize(model)
    if is_main:
        print(table(summary), flush=True)
    return summary

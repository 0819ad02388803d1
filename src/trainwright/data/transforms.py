"""Image transform pipelines written in a recipe: a list of torchvision.transforms.v2 classes by name with
their arguments, e.g.

    train_transforms:
      - {name: RandomResizedCrop, size: 32, scale: [0.6, 1.0]}
      - {name: RandomHorizontalFlip}
      - {name: ToDtype, dtype: float32, scale: true}
      - {name: Normalize, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}

A pipeline gets a decoded image as a uint8 tensor (channels, height, width). Names and arguments are
checked against torchvision when the data set is built (start-up, before any folder is made); `dtype`
arguments are written as torch dtype names ('float32')."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from trainwright.errors import UserError, did_you_mean


def _transform_classes() -> dict[str, type]:
    from torchvision.transforms import v2

    return {
        name: value for name, value in vars(v2).items()
        if not name.startswith("_") and inspect.isclass(value) and issubclass(value, v2.Transform)
    }


def _argument(name: str, value: Any, where: str) -> Any:
    if name == "dtype":
        dtype = getattr(torch, str(value), None)
        if not isinstance(dtype, torch.dtype):
            raise UserError(f"{where}.dtype: '{value}' is not a torch dtype (e.g. float32, float16, uint8)")
        return dtype
    return value


def build_pipeline(steps: list[dict[str, Any]], key: str) -> Any:
    """`steps` (the recipe's list under `key`, e.g. 'data.train_transforms') as a v2.Compose."""
    from torchvision.transforms import v2

    classes = _transform_classes()
    built = []
    for i, step in enumerate(steps):
        where = f"{key}[{i}]"
        if not isinstance(step, dict) or not isinstance(step.get("name"), str):
            raise UserError(f"{where}: expected a mapping with a name, e.g. {{name: RandomHorizontalFlip, p: 0.5}}")
        name, arguments = step["name"], {k: v for k, v in step.items() if k != "name"}
        if name not in classes:
            raise UserError(
                f"{where}.name: torchvision.transforms.v2 has no transform '{name}'{did_you_mean(name, classes)}"
            )
        params = inspect.signature(classes[name]).parameters
        accepted = [p for p in params if p != "self"]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            for argument in arguments:
                if argument not in params:
                    raise UserError(
                        f"{where}.{argument}: {name} takes no argument '{argument}'{did_you_mean(argument, accepted)} "
                        f"(it takes: {', '.join(accepted) or 'no arguments'})"
                    )
        try:
            built.append(classes[name](**{k: _argument(k, v, where) for k, v in arguments.items()}))
        except (TypeError, ValueError) as exc:
            raise UserError(f"{where}: cannot build {name} from {arguments}: {exc}") from None
    return v2.Compose(built)

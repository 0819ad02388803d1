"""Image transform pipelines written in a recipe: a list of torchvision.transforms.v2 classes by name with
their arguments, e.g.

    train_transforms:
      - {name: RandomResizedCrop, size: 32, scale: [0.6, 1.0]}
      - {name: RandomHorizontalFlip}
      - {name: ToDtype, dtype: float32, scale: true}
      - {name: Normalize, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}

A pipeline gets a decoded image as a uint8 tensor (channels, height, width). Names and arguments are
checked against torchvision when the data set is built (start-up, before any folder is made); `dtype`
arguments are written as torch dtype names ('float32'). Values that torchvision refuses only on an image
(`Resize size: -5`, a zero `std`) are one message naming the step and its arguments, at the start-up
check's first batch."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from trainwright.errors import UserError, did_you_mean

_NO_RECIPE_FORM = {"Lambda": "it takes a Python function, which a recipe cannot hold"}


class Pipeline:
    """The built steps, applied in turn; a step that fails on an image is one UserError naming it (its place
    in the recipe's list and its arguments), instead of torchvision's traceback."""

    def __init__(self, steps: list[tuple[str, str, dict[str, Any], Any]]) -> None:
        self.steps = steps  # (where, name, arguments as written, transform)

    def __call__(self, image: Any) -> Any:
        for where, name, arguments, transform in self.steps:
            try:
                image = transform(image)
            except UserError:
                raise
            except Exception as exc:
                shape = tuple(getattr(image, "shape", ()))
                raise UserError(
                    f"{where}: {name} with {arguments} fails on an image of shape {shape}: {type(exc).__name__}: "
                    f"{str(exc).rstrip('.')}; fix its arguments"
                ) from None
        return image


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


def build_pipeline(steps: list[dict[str, Any]], key: str) -> Pipeline:
    """`steps` (the recipe's list under `key`, e.g. 'data.train_transforms') as a Pipeline."""
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
        if name in _NO_RECIPE_FORM:
            raise UserError(f"{where}.name: {name} cannot be used in a recipe: {_NO_RECIPE_FORM[name]}; remove it")
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
            transform = classes[name](**{k: _argument(k, v, where) for k, v in arguments.items()})
        except (TypeError, ValueError) as exc:
            raise UserError(f"{where}: cannot build {name} from {arguments}: {exc}") from None
        built.append((where, name, arguments, transform))
    return Pipeline(built)

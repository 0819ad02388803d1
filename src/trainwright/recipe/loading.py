"""Recipes validated against the schema, with messages in recipe terms (did-you-mean for unknown keys)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from trainwright.errors import UserError, did_you_mean
from trainwright.recipe.schema import Recipe
from trainwright.recipe.yaml_text import apply_overrides, read_yaml


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the schema section found at `loc` (for did-you-mean on unknown keys)."""
    for key in loc:
        if isinstance(key, int):  # an item of a list of sections (`optimizer.groups`)
            continue
        field = model.model_fields.get(str(key))
        annotation = getattr(field, "annotation", None)
        kinds = [annotation, *get_args(annotation)]
        kinds += [t for kind in kinds for t in get_args(kind)]  # `list[Section] | None`
        sections = [t for t in kinds if isinstance(t, type) and issubclass(t, BaseModel)]
        if not sections:  # a value
            return []
        model = sections[0]  # a section, an optional one (`trainer.ema: EmaConfig | None`) or a list of them
    return [field.alias or name for name, field in model.model_fields.items()]


def _describe(error: Mapping[str, Any]) -> str:
    """One line for one pydantic error, in recipe terms."""
    loc = tuple(error["loc"])
    path = ".".join(str(part) for part in loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{path}: unknown key{did_you_mean(str(loc[-1]), _fields_at(Recipe, loc[:-1]))}"
    if kind == "missing":
        return f"{path}: required key is missing"
    return f"{path}: {error['msg']} (got {error['input']!r})"


def validate(data: dict[str, Any], source: str) -> Recipe:
    """Validate raw recipe data against the schema; `source` names the file in messages."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(error) for error in exc.errors()]
        raise UserError(f"{source}: invalid recipe:\n  " + "\n  ".join(lines)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe file (components are checked by `registry.check_recipe`)."""
    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides or [])
    source = f"{path} (with overrides)" if overrides else str(path)
    return validate(data, source)

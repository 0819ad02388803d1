"""The recipe reference cannot drift from the recipe schema: every key that `trainwright check` writes out
has a row in the reference, and the row's default is the schema's."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from conftest import REPO
from trainwright.recipe import Recipe

REFERENCE = REPO / "docs" / "recipes.md"
# Keys whose default the reference describes in words rather than as a value (the schema's is null: the
# data set, task or library decides).
DESCRIBED_DEFAULTS = {"metrics", "data.prefetch_factor"}
_CELL = re.compile(r"(?:\\\||[^|])*")  # a table cell: anything but an unescaped |
_ROW = re.compile(rf"^\| `([^`]+)` \|{_CELL.pattern}\|({_CELL.pattern})\|")
_SECTION = re.compile(r"^## (?:`(\w+)`|Top level)\s*$")


def documented(text: str) -> dict[str, str]:
    """The reference's key rows: 'trainer.epochs' -> its default cell, under each `## section` heading."""
    rows, section = {}, None
    for line in text.splitlines():
        if heading := _SECTION.match(line):
            section = heading.group(1) or ""
        elif line.startswith("#"):
            section = None
        elif section is not None and (row := _ROW.match(line)):
            rows[f"{section}.{row.group(1)}".lstrip(".")] = row.group(2).strip()
    return rows


def schema_keys(model: type[BaseModel] = Recipe, prefix: str = "") -> dict[str, Any]:
    """Every fixed key of the recipe schema with its default (PydanticUndefined: required); a section's keys
    are its own rows, the section itself is not (a component section's `name` is a row)."""
    keys = {}
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        section = field.annotation if isinstance(field.annotation, type) else None
        if section is not None and issubclass(section, BaseModel) and (field.is_required() or field.default_factory):
            keys.update(schema_keys(section, key + "."))
        else:
            keys[key] = PydanticUndefined if field.is_required() else field.get_default(call_default_factory=True)
    return keys


def written(value: Any) -> str:
    """A schema default as the reference writes it."""
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`".replace("'", "")


def test_every_recipe_key_is_documented_with_its_default() -> None:
    rows = documented(REFERENCE.read_text())
    problems = []
    for key, default in schema_keys().items():
        if key not in rows:
            problems.append(f"{key}: no row in {REFERENCE.name}")
        elif key not in DESCRIBED_DEFAULTS and rows[key] != written(default):
            problems.append(f"{key}: documented default {rows[key]!r}, the schema's is {written(default)!r}")
    assert not problems, "\n".join(problems)


def test_a_changed_default_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check reads the reference: a row whose default is edited (here trainer.epochs') is caught."""
    text = REFERENCE.read_text()
    edited = re.sub(r"^(\| `epochs` \|[^|]*\|) `1` \|", r"\1 `2` |", text, flags=re.M)
    assert edited != text
    rows = documented(edited)
    assert rows["trainer.epochs"] == "`2`" != written(schema_keys()["trainer.epochs"])

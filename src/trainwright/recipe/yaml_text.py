"""Recipe text: YAML read safely (bounded, exponent numbers as numbers) and `key.path=value` overrides."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from trainwright.errors import UserError
from trainwright.recipe.shipped import not_found_hint


class _YamlLoader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, which reads `1e-5` or `5e-4` (no dot) as strings; read them as the numbers
    they are (as YAML 1.2 does). Everything else is as `yaml.safe_load` reads it."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


MAX_YAML_VALUES = 1_000_000  # values a YAML text may hold, every alias counted as what it repeats
MAX_YAML_DEPTH = 100  # sections and lists inside each other


class YamlTooLarge(yaml.YAMLError):
    """A YAML text that holds (or, through aliases, expands to) more than the bounds above."""


def parse_yaml(text: str) -> Any:
    """YAML text as data, with exponent numbers read as numbers (recipes, overrides, saved recipes). Aliases
    are shared, not copied, by the loader, but everything after it copies them: a text that expands beyond
    MAX_YAML_VALUES values (a "billion laughs") or nests deeper than MAX_YAML_DEPTH is refused first."""
    try:
        data = yaml.load(text, Loader=_YamlLoader)
    except RecursionError:
        raise YamlTooLarge(f"it nests sections or lists more than {MAX_YAML_DEPTH} deep") from None
    _measure(data, 0, {}, set())
    return data


def _measure(node: Any, depth: int, known: dict[int, tuple[int, int]], open_: set[int]) -> tuple[int, int]:
    """(values, depth) of `node` with its aliases expanded, counted once per shared object; YamlTooLarge beyond
    the bounds, or for an alias that holds itself."""
    if not isinstance(node, (dict, list)):
        return 1, 0
    if id(node) in open_:
        raise YamlTooLarge("an alias holds itself (a structure without end)")
    if id(node) not in known:
        open_.add(id(node))
        values, deepest = 1, 0
        for child in node.values() if isinstance(node, dict) else node:
            size, below = _measure(child, depth + 1, known, open_)
            values, deepest = values + size, max(deepest, below + 1)
            if values > MAX_YAML_VALUES:
                raise YamlTooLarge(f"it holds more than {MAX_YAML_VALUES:,} values once its aliases are expanded")
        open_.discard(id(node))
        known[id(node)] = values, deepest
    values, deepest = known[id(node)]
    if depth + deepest > MAX_YAML_DEPTH:
        raise YamlTooLarge(f"it nests sections or lists more than {MAX_YAML_DEPTH} deep")
    return values, deepest


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every way it can fail into a UserError naming the file."""
    if not path.exists():
        raise UserError(f"recipe file not found: {path}{not_found_hint(str(path))}")
    if path.is_dir():
        raise UserError(f"{path} is a folder; expected a recipe YAML file such as recipes/heart.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read recipe file {path}: {exc}") from None
    try:
        data = parse_yaml(text)
    except YamlTooLarge as exc:
        raise UserError(f"{path}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{path}: {where}YAML syntax error: {problem}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping of keys (name:, data:, model:, ...)")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split 'a.b.c=value' into (['a', 'b', 'c'], value parsed as a YAML scalar or list)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"bad override '{text}': expected key.path=value, e.g. trainer.epochs=3")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        if raw.lstrip()[:1] in ("[", "{", '"', "'"):
            raise UserError(
                f"bad override '{text}': the value is not valid YAML ({getattr(exc, 'problem', exc)})"
            ) from None
        value = raw  # plain text such as a path with a colon
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with each 'key.path=value' set."""
    result = json.loads(json.dumps(data))
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                prefix = ".".join(keys[: depth + 1])
                raise UserError(f"bad override '{text}': '{prefix}' is a value, not a section")
            node = child
        node[keys[-1]] = value
    return result

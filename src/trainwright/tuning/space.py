"""A sweep spec, in the shape of a Weights & Biases sweep configuration (so one file serves both):

  recipe: ../heart.yaml            # trainwright: the recipe, relative to this file
  method: grid                     # grid (every combination) or random (run_cap draws from `seed`)
  metric: {name: val/accuracy, goal: maximize}
  run_cap: 6                       # at most this many trials
  seed: 0                          # random: the draws
  parameters:                      # recipe keys
    optimizer.lr: {values: [0.1, 0.03, 0.01]}
    model.hidden: {values: [[72, 36], [32, 16]]}
    optimizer.momentum: {value: 0.9}                                     # fixed
    optimizer.weight_decay: {min: 1.0e-5, max: 1.0e-2, distribution: log_uniform_values}   # random only
    data.batch_size: {min: 32, max: 128, distribution: int_uniform}                        # random only
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainwright.errors import UserError
from trainwright.recipe import read_yaml

MAX_TRIALS = 10_000  # the most trials one sweep may have: each is a run dir and a `train` process


class Parameter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    values: list[Any] | None = None
    value: Any = None
    min: float | None = None
    max: float | None = None
    distribution: Literal["uniform", "log_uniform_values", "int_uniform", "categorical", "constant"] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Parameter:
        ranged = self.min is not None or self.max is not None
        if sum([self.values is not None, "value" in self.model_fields_set, ranged]) != 1:
            raise ValueError("give one of values: [...], value: x, or min/max with a distribution")
        if self.values is not None and not self.values:
            raise ValueError("values is empty")
        if ranged and (self.min is None or self.max is None or self.min > self.max):
            raise ValueError("min and max are both needed, with min <= max")
        if self.distribution == "log_uniform_values" and (self.min or 0) <= 0:
            raise ValueError("log_uniform_values needs min > 0")
        return self

    def choices(self) -> list[Any] | None:
        """The values a grid walks through (None for a range, which only random can draw from)."""
        return self.values if self.values is not None else [self.value] if "value" in self.model_fields_set else None

    def draw(self, rng: random.Random) -> Any:
        choices = self.choices()
        if choices is not None:
            return rng.choice(choices)
        assert self.min is not None and self.max is not None  # a range (_one_kind)
        low, high = float(self.min), float(self.max)
        if self.distribution == "log_uniform_values":
            return math.exp(rng.uniform(math.log(low), math.log(high)))
        if self.distribution == "int_uniform":
            return rng.randint(int(low), int(high))
        return rng.uniform(low, high)


class Metric(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    goal: Literal["minimize", "maximize"] = "minimize"


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")  # W&B's own keys (program, command, early_terminate, ...)

    recipe: str
    method: Literal["grid", "random"] = "grid"
    metric: Metric
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    run_cap: int | None = Field(None, ge=1)
    seed: int = 0

    def count(self) -> int:
        """How many trials the spec asks for, counted without making them."""
        if not self.parameters:
            raise UserError("parameters: the search space is empty; give at least one recipe key with values")
        if self.method == "random":
            if self.run_cap is None:
                raise UserError("run_cap: method random needs a budget (run_cap: N trials)")
            return self.run_cap
        ranged = [key for key, p in self.parameters.items() if p.choices() is None]
        if ranged:
            raise UserError(f"parameters.{ranged[0]}: a grid needs values: [...] (min/max ranges need method: random)")
        combinations = math.prod(len(p.choices() or ()) for p in self.parameters.values())
        return combinations if self.run_cap is None else min(combinations, self.run_cap)

    def trials(self) -> Iterator[dict[str, Any]]:
        """Each trial's values of the swept keys, in a fixed order (the same every time), made one at a
        time; a spec of more than MAX_TRIALS trials is refused first."""
        count = self.count()
        if count > MAX_TRIALS:
            if self.method == "grid":
                sizes = " x ".join(str(len(p.choices() or ())) for p in self.parameters.values())
                shape, fix = f" ({sizes} values)", "give fewer values, or run_cap: N to take the first N of the grid"
            else:
                shape, fix = "", f"lower run_cap to {MAX_TRIALS:,} or less"
            raise UserError(
                f"the sweep has {count:,} trials{shape}, more than the {MAX_TRIALS:,} a sweep may have; {fix}"
            )
        if self.method == "grid":
            keys = list(self.parameters)
            combinations = itertools.product(*(self.parameters[k].choices() or () for k in keys))
            return (dict(zip(keys, combo)) for combo in itertools.islice(combinations, count))
        rng = random.Random(self.seed)
        return ({key: p.draw(rng) for key, p in self.parameters.items()} for _ in range(count))


def overrides(values: dict[str, Any]) -> list[str]:
    """`key=value` overrides of one trial (values as JSON, which YAML reads back as written)."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def load_spec(path: Path) -> tuple[SweepSpec, Path]:
    """The spec and its recipe's path (relative to the spec file); a bad spec is one message."""
    try:
        spec = SweepSpec.model_validate(read_yaml(path))
    except ValidationError as exc:
        problems = "\n  ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise UserError(f"{path}: invalid sweep spec:\n  {problems}") from None
    recipe = (path.parent / spec.recipe).resolve()
    if not recipe.is_file():
        raise UserError(
            f"{path}: recipe {spec.recipe} not found (looked for {recipe}; the path is relative to the spec)"
        )
    return spec, recipe

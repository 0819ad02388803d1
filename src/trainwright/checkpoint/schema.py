"""What the JSON files of a checkpoint must hold, as pydantic schemas, so that a file with a missing field or
a value of the wrong type is found damaged when the checkpoint is verified, not as a KeyError or TypeError
in the middle of a load (no torch)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Natural = Annotated[int, Field(ge=0)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Word = Annotated[int, Field(ge=0, lt=2**32)]  # a Mersenne Twister state word


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ManifestEntry(_Strict):
    bytes: Natural
    sha256: Sha256


class Manifest(_Strict):
    format: Literal[1]
    step: Natural
    files: dict[str, ManifestEntry]


class TrainStateFile(BaseModel):
    """trainer.json: the fields every version wrote are required; later ones default (see TrainState)."""

    model_config = ConfigDict(strict=True, extra="ignore")
    step: Natural
    epoch: Natural
    batch_in_epoch: Natural
    samples_seen: Natural = 0
    loss_sum: float = 0.0
    loss_count: Natural = 0
    val_metrics: dict[str, float] = {}
    val_step: Annotated[int, Field(ge=-1)] = -1
    test_metrics: dict[str, float] = {}
    best_metric: float | None = None
    wandb_run_id: str = ""
    world_size: Annotated[int, Field(ge=1)] = 1
    sampler_seed: int = 0
    recipe_digest: str = ""
    precision: str = ""
    steps_per_epoch: Natural = 0
    early_best: float | None = None
    early_best_epoch: Natural = 0
    early_waited: Natural = 0
    stopped_early_epoch: Natural = 0
    stopped_by_callback: str = ""
    stop_reason: str = ""


class CallbackState(_Strict):
    name: str  # the callback's recipe name (an import path)
    state: dict[str, Any]  # what its state_dict() returned


class CallbacksFile(_Strict):
    """callbacks.json: the states of the recipe's callbacks, in the recipe's order (the main process's)."""

    callbacks: list[CallbackState]


class RngFile(_Strict):
    """rng_<rank>.json: Python's `random.getstate()` and NumPy's `np.random.get_state()` as lists."""

    python: tuple[Literal[3], Annotated[list[Word], Field(min_length=625, max_length=625)], float | None]
    numpy: tuple[
        Literal["MT19937"], Annotated[list[Word], Field(min_length=624, max_length=624)],
        Annotated[int, Field(ge=0, le=624)], Literal[0, 1], float,
    ]


class ParamGroup(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    params: list[Natural]


class FullOptimizerFile(_Strict):
    """optimizer.json of a full checkpoint: param groups and non-tensor per-parameter values by index."""

    param_groups: list[ParamGroup]
    scalars: dict[Annotated[str, Field(pattern=r"^\d+$")], dict[str, Any]]


def schema_problem(schema: type[BaseModel], text: str) -> str | None:
    """Why the JSON `text` does not fit `schema` (its first error: where and what), or None."""
    try:
        schema.model_validate_json(text)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "the top level"
        return f"{where}: {error['msg']}"
    return None

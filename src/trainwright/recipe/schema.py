"""The recipe schema: every section and key a recipe may hold, with its default and description."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_WORKERS = 128  # DataLoader worker processes per training process


# Values are taken as written: `true` is not an int and `64.0` is not a batch size (strict types).
class _Section(BaseModel):
    """A recipe section with a fixed set of keys (a key that is a Python keyword, like `async`, is spelt
    with a trailing underscore in the code)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class _Component(BaseModel):
    """A section naming a component; keys beyond the fixed ones are the component's keyword arguments."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: str = Field(description="registry name or import path 'package.module:attr'")

    @model_validator(mode="before")
    @classmethod
    def _null_removes_an_argument(cls, data: Any) -> Any:
        """`optimizer.momentum=null` (or `momentum: null`) removes the argument, so the component's default applies."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k in cls.model_fields}
        return data

    def kwargs(self) -> dict[str, Any]:
        """The component's keyword arguments (every key but the fixed ones)."""
        return dict(self.model_extra or {})


class CollateConfig(_Component):
    """`data.collate`: a collate function's name (`pad`) or import path, and its keyword arguments."""


class DataConfig(_Component):
    batch_size: int = Field(ge=1, description="GLOBAL batch size: each of N processes gets batch_size/N")
    collate: CollateConfig | None = Field(
        None, description="how items become a batch: null (stacked: items of one shape), pad (padded to the batch's "
        "longest item; pad_to_multiple_of, pad_value, ignore_index), or package.module:function (items -> batch)"
    )
    num_workers: int | Literal["auto"] = Field(
        0, description="DataLoader workers for data sets served item by item (auto: the cores per process, less one, "
        "at most 8); they stay up for the whole run"
    )
    prefetch_factor: int | None = Field(
        None, ge=1, le=64, description="batches each worker loads ahead (torch's default: 2)"
    )
    val_splits: dict[str, dict[str, Any]] | None = Field(
        None, description="named validation splits besides the data set's own, each {argument: value, ...}: the "
        "validation split of the data set built with these arguments changed (metrics logged as val/<name>/...)"
    )

    @field_validator("val_splits")
    @classmethod
    def _split_names(cls, value: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
        """Split names become metric names (val/<name>/loss): letters, digits, '_', '.', '-'."""
        for name in value or {}:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                raise ValueError(f"split name {name!r} must be letters, digits, '_', '.' or '-' (it is logged as "
                                 f"val/<name>/<metric>)")
        return value

    @field_validator("collate", mode="before")
    @classmethod
    def _a_name_alone(cls, value: Any) -> Any:
        """`collate: pad` is short for `collate: {name: pad}`."""
        return {"name": value} if isinstance(value, str) else value

    @field_validator("num_workers")
    @classmethod
    def _workers_bounded(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= MAX_WORKERS:  # each is a process: a bound before any fork
            raise ValueError(f"num_workers must be 0 to {MAX_WORKERS}, or 'auto'")
        return value


class ModelConfig(_Component):
    freeze: list[str] | None = Field(
        None, description="parameters that do not train: shell-style patterns over parameter names, e.g. 'embed.*'"
    )


class AdapterConfig(_Component):
    """A peft adapter: `name` the kind (lora, loha, ia3, ...), the other keys the settings of its peft config."""


class LossConfig(_Component):
    pass


class StepConfig(_Component):
    """How a batch goes through the model and is scored (step.py): `default`, or a Step class by import path."""

    name: str = Field("default", description="registry name or import path 'package.module:Class' of a Step")


class ParamGroupConfig(_Section):
    params: list[str] = Field(
        min_length=1, description="shell-style patterns over the names of the parameters it holds"
    )
    name: str | None = Field(None, description="its name in the logs (lr/<name>); default: group<index>")
    lr: float | None = Field(None, gt=0, description="its learning rate (default: optimizer.lr)")
    weight_decay: float | None = Field(None, ge=0, description="its weight decay (default: the optimizer's)")


class OptimizerConfig(_Component):
    lr: float = Field(gt=0, allow_inf_nan=False)
    groups: list[ParamGroupConfig] | None = Field(
        None, description="parameter groups with their own lr/weight_decay; the parameters no group holds train "
        "in the default group",
    )
    no_decay: bool = Field(
        False, description="no weight decay on biases, norm weights (parameters of fewer than 2 dimensions) and "
        "embedding tables",
    )

    @field_validator("groups")
    @classmethod
    def _group_names_differ(cls, groups: list[ParamGroupConfig] | None) -> list[ParamGroupConfig] | None:
        names = [group.name or f"group{index}" for index, group in enumerate(groups or [])]
        for name in names:
            if name == "default" or names.count(name) > 1 or name.endswith(".no_decay"):
                raise ValueError(f"group name '{name}' is taken: name each group differently, not 'default' "
                                 "and not ending in '.no_decay'")
        return groups


class SchedulerConfig(_Component):
    name: str = "none"


class EarlyStoppingConfig(_Section):
    monitor: str = Field("val/loss", description="the validation metric watched (one the run reports)")
    mode: Literal["min", "max"] = Field("min", description="min: lower is better; max: higher is better")
    patience: int = Field(ge=1, description="stop after this many validations in a row without improvement")
    min_delta: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="an improvement must beat the best value by more than this"
    )


class EmaConfig(_Section):
    decay: float = Field(gt=0, lt=1, description="the average keeps this share of itself at each update")
    start_step: int = Field(0, ge=0, description="up to this optimizer step the average is set to the weights")
    every_steps: int = Field(1, ge=1, description="update the average after every N-th optimizer step")


class ProfileConfig(_Section):
    start_step: int = Field(1, ge=1, description="the first optimizer step recorded (counted from 1)")
    steps: int = Field(5, ge=1, description="how many optimizer steps are recorded")


class TrainerConfig(_Section):
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optional cap on optimizer steps")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto: what the launcher says (accelerate launch --mixed_precision), else no"
    )
    grad_accum_steps: int = Field(1, ge=1)
    grad_clip: float | None = Field(None, gt=0, allow_inf_nan=False)
    log_every_steps: int = Field(50, ge=1)
    eval_every_epochs: int = Field(1, ge=1)
    eval_every_steps: int | None = Field(
        None, ge=1, description="also validate after every N-th optimizer step of the run (null: at epoch ends only)"
    )
    test_at_end: bool = Field(
        True, description="score the data set's test split once at the end of the run (test/<metric>, also in "
        "summary.json), where it has one"
    )
    record_samples: bool = Field(False, description="write each step's sample indices to <run dir>/samples/")
    compile: bool = Field(False, description="torch.compile the model (module.compile(): state dict names unchanged)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    deterministic: bool = Field(
        True, description="deterministic kernels, so that a resumed run ends bitwise equal to an uninterrupted one; "
        "false: faster kernels where torch has nondeterministic ones, and resumes are no longer bitwise",
    )
    early_stopping: EarlyStoppingConfig | None = Field(
        None, description="stop before the last epoch when the monitored metric stops improving"
    )
    ema: EmaConfig | None = Field(
        None, description="keep an exponential moving average of the weights; validation and the final weights use it"
    )
    profile: ProfileConfig | None = Field(
        None, description="record these optimizer steps with torch.profiler into <run dir>/profile/"
    )

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        """YAML reads a bare `no` as false: `mixed_precision: no` means 'no'."""
        return "no" if value is False else value

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the whole run: `epochs` epochs, capped by `max_steps`."""
        return min(self.max_steps or sys.maxsize, self.epochs * steps_per_epoch)


class CheckpointConfig(_Section):
    every_steps: int | None = Field(None, ge=1)
    every_epochs: int | None = Field(1, ge=1)
    keep_last: int = Field(2, ge=1)
    keep_best: int = Field(0, ge=0)
    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    async_: bool = Field(
        True, alias="async",
        description="write in the background: training waits only for an in-memory copy of the state",
    )


class WandbConfig(_Section):
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "trainwright"
    entity: str | None = None
    tags: list[str] = Field(default_factory=list)
    group: str | None = Field(None, description="W&B group (`cv` and `sweep` set it to their run dir's name)")
    name: str | None = Field(None, description="the W&B run's display name (null: the recipe's name)")
    notes: str | None = Field(None, description="a description of the W&B run")
    job_type: str | None = Field(None, description="the W&B run's job type, e.g. train or eval")
    init_timeout: float = Field(
        10.0,
        gt=0,
        allow_inf_nan=False,
        description="seconds to wait for W&B to start online before falling back to offline",
    )


class LoggingConfig(_Section):
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    tensorboard: bool = False
    progress: Literal["auto", "bar", "lines", "off"] = Field(
        "auto", description="what the main process shows while training, on stderr: bar (tqdm, with the loss), lines "
        "(one per log interval and per validation), off; auto: bar on a terminal, else lines"
    )
    peak_tflops: float | None = Field(
        None, gt=0, description="one device's peak TFLOP/s for perf/mfu (null: a table of known GPUs; none on the CPU)"
    )

    @field_validator("progress", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML reads a bare `off` as false: `progress: off` (or false) means 'off', `true` 'auto'."""
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("wandb", mode="before")
    @classmethod
    def _wandb_switch(cls, value: Any) -> Any:
        """Allow `logging.wandb: false` (disabled) and `true` (auto) as shorthands."""
        if isinstance(value, bool):
            return {"mode": "auto" if value else "disabled"}
        return value


class DistributedConfig(_Section):
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="auto: fsdp when the accelerate config's distributed_type is FSDP, else ddp"
    )
    shard_modules: list[str] | None = Field(
        None, description="fsdp: class names of the modules to shard one by one (default: the model's block "
        "classes, _no_split_modules, else those holding parameters; never one that splits tied weights)",
    )
    reshard_after_forward: bool = Field(True, description="fsdp: free gathered parameters after forward")
    activation_checkpointing: list[str] | None = Field(
        None, description="class names of modules whose activations are recomputed in backward instead of kept "
        "(less memory, more compute; ddp and fsdp)",
    )


class CallbackConfig(_Component):
    """One of the recipe's `callbacks`: an import path 'package.module:Class' and its keyword arguments."""


class CvConfig(_Section):
    folds: int = Field(ge=2, description="split the data into this many folds (stratified for classifiers)")
    fold: int | None = Field(None, ge=1, description="validate on this fold (1..folds), train on the others")
    stratify: bool = Field(True, description="classifiers: every fold holds the classes in the same proportions")

    @model_validator(mode="after")
    def _fold_in_range(self) -> CvConfig:
        if self.fold is not None and self.fold > self.folds:
            raise ValueError(f"cv.fold must be between 1 and cv.folds ({self.folds}), got {self.fold}")
        return self


class Recipe(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seeds NumPy, Python and torch: 0 to 2**32 - 1")
    data: DataConfig
    model: ModelConfig
    adapter: AdapterConfig | None = Field(
        None, description="train a peft adapter (e.g. {name: lora, r: 8, lora_alpha: 16, target_modules: [c_attn]}) "
        "on the frozen model (the extra trainwright[finetune])",
    )
    loss: LossConfig
    step: StepConfig | None = Field(
        None, description="how a batch goes through the model and is scored (null: the default step)"
    )
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    metrics: list[str] | None = Field(
        None, description="validation metrics (default: by task; []: none, only the loss)"
    )
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    cv: CvConfig | None = Field(None, description="k-fold cross-validation (`trainwright cv` sets cv.fold per run)")
    callbacks: list[CallbackConfig] | None = Field(
        None, description="your own trainwright.Callback classes: import paths, or {name: path, argument: value, ...}"
    )

    @field_validator("callbacks", mode="before")
    @classmethod
    def _a_path_alone(cls, value: Any) -> Any:
        """`callbacks: [pkg.mod:Class]` is short for `[{name: pkg.mod:Class}]`."""
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data (what is written to the run dir and to W&B)."""
        return self.model_dump(mode="json", by_alias=True)

    def digest(self) -> str:
        """A stable hash of the resolved recipe."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

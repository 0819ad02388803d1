"""Recipes: the schema (schema.py), YAML text and overrides (yaml_text.py), validation with messages in recipe
terms (loading.py), and the recipes shipped with trainwright (shipped.py). The names other modules use are
importable from here."""

from trainwright.recipe.loading import load_recipe, validate
from trainwright.recipe.schema import (
    AdapterConfig,
    CallbackConfig,
    CheckpointConfig,
    CollateConfig,
    CvConfig,
    DataConfig,
    DistributedConfig,
    EarlyStoppingConfig,
    EmaConfig,
    LoggingConfig,
    LossConfig,
    ModelConfig,
    OptimizerConfig,
    ParamGroupConfig,
    ProfileConfig,
    Recipe,
    SchedulerConfig,
    StepConfig,
    TrainerConfig,
    WandbConfig,
)
from trainwright.recipe.yaml_text import apply_overrides, parse_override, parse_yaml, read_yaml

__all__ = [
    "AdapterConfig", "CallbackConfig", "CheckpointConfig", "CollateConfig", "CvConfig", "DataConfig",
    "DistributedConfig", "EarlyStoppingConfig", "EmaConfig", "LoggingConfig", "LossConfig", "ModelConfig",
    "OptimizerConfig", "ParamGroupConfig", "ProfileConfig", "Recipe", "SchedulerConfig", "StepConfig",
    "TrainerConfig", "WandbConfig", "apply_overrides", "load_recipe", "parse_override", "parse_yaml", "read_yaml",
    "validate",
]

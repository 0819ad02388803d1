"""Hugging Face `transformers` models by name (`model.name: hf`), built from a config written in the
recipe or loaded from a local pretrained folder. Imported only by recipes that name it; `transformers`
is the optional extra `trainwright[hf]`.

  model:
    name: hf
    architecture: GPT2LMHeadModel        # a transformers model class, or an auto class (AutoModelForCausalLM)
    config: {model_type: gpt2, n_layer: 2, n_embd: 64, n_head: 2, vocab_size: 256, n_positions: 64}
    pretrained: path/to/folder           # optional: weights (and config) saved by save_pretrained

The model is the transformers model itself (state-dict names and `save_pretrained` as transformers has
them); it returns a ModelOutput and computes its own loss when given `labels`. A causal LM shifts its
`labels` itself (so `labels` may be the `input_ids`); it is marked so that per-token metrics compare its
logits with the next token (step.SHIFTS_LABELS).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from trainwright.checkpoint.safetensors_header import header_problem
from trainwright.errors import UserError, did_you_mean
from trainwright.step import SHIFTS_LABELS

EXTRA = "pip install 'trainwright[hf]'"


def hf(architecture: str, config: dict[str, Any] | None = None, pretrained: str | None = None) -> nn.Module:
    """A transformers model of class `architecture` from `config` (its config class's settings; an auto
    class needs `model_type`), or from the folder `pretrained` (local files only; `config` overrides its
    settings)."""
    transformers = _transformers()
    model_class = _model_class(transformers, architecture)
    settings = dict(config or {})
    auto = architecture.startswith("Auto")
    if pretrained is not None:
        folder = Path(pretrained)
        if not (folder / "config.json").is_file():
            raise UserError(
                f"model.pretrained: {folder} is not a folder written by save_pretrained (it has no config.json)"
            )
        _check_weights_files(folder)
        saved = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        _check_settings(type(saved), {k: v for k, v in settings.items() if k != "model_type"})
        # transformers' own "Loading weights" bar would land between a run's progress lines (and in its log file)
        transformers.utils.logging.disable_progress_bar()
        model = model_class.from_pretrained(folder, local_files_only=True, use_safetensors=True, **settings)
        return _marked(transformers, model)
    model_config = _config(transformers, model_class, architecture, settings, auto)
    return _marked(transformers, model_class.from_config(model_config) if auto else model_class(model_config))


def _check_weights_files(folder: Path) -> None:
    """A pretrained folder's weights must be safetensors files, whole and well-formed (their headers checked
    before transformers reads them): pickled weights (pytorch_model.bin) are never loaded, as they could run
    code."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
        held = f"; its pickled weights ({', '.join(pickled)}) are never loaded (they could run code)" if pickled else ""
        raise UserError(
            f"model.pretrained: {folder} has no safetensors weights (model.safetensors){held}. Save the model "
            "with save_pretrained(..., safe_serialization=True), or convert its weights to safetensors"
        )
    for path in files:
        if problem := header_problem(path):
            raise UserError(f"model.pretrained: {path} is damaged ({problem}); save the pretrained model again")


def _marked(transformers: ModuleType, model: nn.Module) -> nn.Module:
    """`model`, marked as shifting its labels when it is a causal language model (its class is one that
    AutoModelForCausalLM builds)."""
    causal = transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    setattr(model, SHIFTS_LABELS, type(model).__name__ in set(causal))
    return model


def _transformers() -> ModuleType:
    try:
        import transformers
    except ImportError:
        raise UserError(
            f"model.name=hf needs the Hugging Face transformers library, which is not installed: {EXTRA}"
        ) from None
    return transformers


def _model_class(transformers: ModuleType, name: str) -> type[Any]:
    """The transformers class `name`: a model class or an auto class (AutoModel...)."""
    try:
        found = getattr(transformers, name)
    except AttributeError:
        candidates = [n for n in dir(transformers) if "Model" in n or n.endswith("LM")]
        raise UserError(
            f"model.architecture: transformers {transformers.__version__} has no "
            f"'{name}'{did_you_mean(name, candidates)} "
            "(a model class such as GPT2LMHeadModel, or an auto class such as AutoModelForCausalLM)"
        ) from None
    except ImportError as exc:  # a model whose own dependencies are missing
        raise UserError(f"model.architecture: transformers cannot import '{name}': {exc}") from None
    is_model = isinstance(found, type) and (issubclass(found, nn.Module) or hasattr(found, "from_config"))
    if not is_model or not hasattr(found, "from_pretrained"):
        raise UserError(
            f"model.architecture: transformers' '{name}' is not a model class "
            "(e.g. GPT2LMHeadModel or AutoModelForCausalLM)"
        )
    return found


def _config(
    transformers: ModuleType, model_class: type[Any], architecture: str, settings: dict[str, Any], auto: bool
) -> Any:
    """The model's config object from the recipe's settings (`model_type` chooses the config class; a
    model class brings its own)."""
    model_type = settings.pop("model_type", None)
    if model_type is None:
        if auto:
            raise UserError(
                f"model.config.model_type is needed with the auto class {architecture} (e.g. model_type: gpt2)"
            )
        config_class = model_class.config_class
    else:
        mapping = transformers.CONFIG_MAPPING
        if model_type not in mapping:
            raise UserError(
                f"model.config.model_type: transformers has no model type '{model_type}'"
                f"{did_you_mean(str(model_type), mapping.keys())}"
            )
        config_class = mapping[model_type]
    _check_settings(config_class, settings)
    return config_class(**settings)


def _check_settings(config_class: type[Any], settings: dict[str, Any]) -> None:
    """transformers configs take any keyword (a misspelt one is silently kept): only their own settings pass."""
    known = (
        set(inspect.signature(config_class.__init__).parameters)
        | set(config_class().to_dict())
        | set(getattr(config_class, "attribute_map", {}))
        | {name for name, value in inspect.getmembers(config_class) if isinstance(value, property) and value.fset}
    ) - {"self", "kwargs"}  # settable properties: num_labels (a sequence classifier's classes), output_attentions
    for key in settings:
        if key not in known:
            raise UserError(
                f"model.config.{key}: {config_class.__name__} has no setting '{key}'{did_you_mean(key, known)}"
            )

"""Which data kinds a model can take, checked from the recipe alone (`trainwright check`, and `train` before
any data are read): a pair that cannot work is one message naming both sides and what to change, not a
traceback at the first batch.

The step (step.py) adapts what the data yield to what the model takes where the shapes make sense (token
pairs to a Hugging Face model's `input_ids`/`labels`); this module knows what each built-in data set yields
and each built-in model takes. A component of your own joins in by registering `yields=` (a data set) or
`takes=` (a model, a tuple) with its registry; one that says nothing is not checked here (the start-up
check still runs one batch through it)."""

from __future__ import annotations

import importlib
from typing import Any

from trainwright.errors import UserError
from trainwright.recipe import Recipe
from trainwright.registry import DATASETS, MODELS

FEATURES, IMAGES, TOKENS = "features", "images", "tokens"
NAMED_TOKENS = "named tokens"  # {input_ids, labels, attention_mask} mappings: a transformers LM's own inputs
DATA_YIELDS = {"heart": FEATURES, "linear": FEATURES, "csv": FEATURES, "fashion_mnist": IMAGES,
               "image_folder": IMAGES, "text": TOKENS, "hf_dataset": FEATURES,
               "instructions": NAMED_TOKENS}  # npy and shards hold either: not checked
MODEL_TAKES = {"mlp": (FEATURES, IMAGES), "linear_regression": (FEATURES,), "lenet": (IMAGES,), "gpt": (TOKENS,)}
HF_INPUTS = {"input_ids": (TOKENS, NAMED_TOKENS), "pixel_values": (IMAGES,)}  # a transformers class's main_input_name

SHOWN = {FEATURES: "feature vectors (batch, features)", IMAGES: "images (batch, channels, height, width)",
         TOKENS: "token ids (batch, time)",
         NAMED_TOKENS: "named token ids ({input_ids, labels, attention_mask}, each (batch, time))"}
MODELS_FOR = {FEATURES: "mlp", IMAGES: "lenet, mlp or a torchvision model by import path",
              TOKENS: "gpt, or hf with a language model such as GPT2LMHeadModel",
              NAMED_TOKENS: "hf with a causal language model such as GPT2LMHeadModel"}
DATA_FOR = {FEATURES: "heart, csv, npy or hf_dataset", IMAGES: "fashion_mnist or image_folder", TOKENS: "text",
            NAMED_TOKENS: "instructions"}


def check_pair(recipe: Recipe) -> None:
    """The recipe's data set yields what its model takes, where both are known; else one UserError."""
    yields = DATA_YIELDS.get(recipe.data.name) or DATASETS.meta(recipe.data.name).get("yields")
    takes = model_takes(recipe.model.name, recipe.model.kwargs())
    if yields is None or takes is None or yields in takes:
        return
    model = recipe.model.name
    if model == "hf":
        model = f"hf ({recipe.model.kwargs().get('architecture')})"
    raise UserError(
        f"model '{model}' takes {' or '.join(SHOWN[kind] for kind in takes)}, but data set '{recipe.data.name}' "
        f"yields {SHOWN[yields]}: use a model that takes them (model.name: {MODELS_FOR[yields]}) or data that "
        f"it takes (data.name: {DATA_FOR[takes[0]]})"
    )


def model_takes(name: str, kwargs: dict[str, Any]) -> tuple[str, ...] | None:
    """What a model takes: a built-in's, a registered `takes`, an hf architecture's main input; else None."""
    if name in MODEL_TAKES:
        return MODEL_TAKES[name]
    if name == "hf":
        return _hf_takes(str(kwargs.get("architecture", "")))
    takes = MODELS.meta(name).get("takes")
    return tuple(takes) if takes else None


def _hf_takes(architecture: str) -> tuple[str, ...] | None:
    """A transformers class's input kind: its `main_input_name`; an auto class's from its name."""
    try:
        transformers = importlib.import_module("transformers")
        model_class = getattr(transformers, architecture, None)
    except ImportError:
        return None  # the builder's check says what to install
    main_input = getattr(model_class, "main_input_name", None)
    if main_input is None and architecture.startswith("Auto"):
        if any(word in architecture for word in ("Audio", "Speech", "CTC", "Video")):
            return None
        main_input = "pixel_values" if any(word in architecture for word in ("Image", "Vision")) else "input_ids"
    return HF_INPUTS.get(str(main_input))

"""Data paths pinned when a run starts: a relative `data.path` or `data.root` (and `model.pretrained` of
an `hf` model) is made absolute in the run's recipe, so every later command (resume, eval, predict) reads the
same files wherever it runs.
Imports no torch (the train command plans from files alone)."""

from __future__ import annotations

import os
import typing

from trainwright.recipe import Recipe, validate

ALLOW_FLAG = "--allow-data-change"  # the command-line flag that accepts data differing from the run's record

# The built-in data sets' arguments that are file or folder paths.
BUILT_IN_PATH_ARGUMENTS = {
    "csv": ("path",), "fashion_mnist": ("root",), "text": ("path", "tokenizer"),
    "instructions": ("path", "tokenizer"), "hf_dataset": ("path",), "image_folder": ("root",), "shards": ("root",),
    "npy": ("inputs", "targets", "val_inputs", "val_targets"),
}


# The built-in models' arguments that are folder paths.
MODEL_PATH_ARGUMENTS = {"hf": ("pretrained",)}


def path_arguments(data_name: str) -> list[str]:
    """A data set's path arguments: the built-ins' from the table above; an imported builder's are its
    parameters annotated `pathlib.Path` (or `os.PathLike`, or an optional one)."""
    if ":" not in data_name:
        return list(BUILT_IN_PATH_ARGUMENTS.get(data_name, ()))
    from trainwright.registry import DATASETS, is_path_annotation

    try:
        hints = typing.get_type_hints(DATASETS.get(data_name, key="data.name"))
    except Exception:  # unresolvable annotations: nothing is taken for a path
        return []
    return [key for key, hint in hints.items() if key != "return" and is_path_annotation(hint)]


def path_keys(recipe: Recipe) -> list[str]:
    """The recipe keys of the data paths ('data.path', ...): where the data are may change on resume;
    what they hold is checked by their fingerprint."""
    return [f"data.{key}" for key in path_arguments(recipe.data.name)]


def pin_paths(recipe: Recipe) -> Recipe:
    """The recipe with its data paths, and a built-in model's folder (`hf`'s `pretrained`), absolute (a
    relative one is taken from the current folder)."""
    data = recipe.to_dict()
    changed = False
    model_paths = MODEL_PATH_ARGUMENTS.get(recipe.model.name, ())
    named = [(split, path_arguments(str(split.get("name", recipe.data.name))))
             for split in (data["data"].get("val_splits") or {}).values()]  # data.val_splits' own paths
    for section, keys in [(data["data"], path_arguments(recipe.data.name)), (data["model"], model_paths), *named]:
        for key in keys:
            value = section.get(key)
            if isinstance(value, str) and not os.path.isabs(os.path.expanduser(value)):
                section[key] = os.path.abspath(os.path.expanduser(value))
                changed = True
    return validate(data, "the recipe") if changed else recipe

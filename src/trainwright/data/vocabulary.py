"""The vocabulary of a language-model run, for `predict --prompt` and `export --hf`: the one its data recorded
(`data: text`, in data.json), else the tokenizer of its Hugging Face model's pretrained folder (a `tokenizers`
tokenizer.json, as `save_pretrained` of a fast tokenizer writes it, and as `export --hf` passes it on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainwright.data.text import Codec
from trainwright.recipe import Recipe

TOKENIZER_FILE = "tokenizer.json"
# What a transformers fast tokenizer's save_pretrained writes besides tokenizer.json (copied on where present).
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json")


def run_codec(recipe: Recipe, record: dict[str, Any] | None) -> Codec | None:
    """Text <-> token ids for the run: its data's recorded vocabulary, else its pretrained folder's tokenizer;
    None when it has neither."""
    if "vocabulary" in (record or {}).get("preprocessing", {}):
        return Codec.from_record(record or {})
    folder = pretrained_folder(recipe)
    if folder is not None and (folder / TOKENIZER_FILE).is_file():
        return Codec("tokenizer", (), folder / TOKENIZER_FILE)
    return None


def pretrained_folder(recipe: Recipe) -> Path | None:
    """The local folder a Hugging Face model was loaded from (`model.pretrained`), if any."""
    folder = recipe.model.kwargs().get("pretrained") if recipe.model.name == "hf" else None
    return None if folder is None else Path(folder)


def tokenizer_files(recipe: Recipe, record: dict[str, Any] | None) -> dict[str, Path]:
    """The run's tokenizer files by the name they take in a save_pretrained folder: those of its pretrained
    folder, or its data's tokenizer file (`data.tokenizer`) as tokenizer.json; {} for other vocabularies."""
    folder = pretrained_folder(recipe)
    if folder is not None and (folder / TOKENIZER_FILE).is_file():
        return {name: folder / name for name in TOKENIZER_FILES if (folder / name).is_file()}
    codec = run_codec(recipe, record)
    return {TOKENIZER_FILE: codec.tokenizer} if codec is not None and codec.tokenizer is not None else {}


def no_vocabulary(run: Path, recipe: Recipe) -> str:
    """Why a sequence run cannot read a prompt, and what would give it a vocabulary."""
    return (
        f"{run} has no vocabulary to read a prompt and write text with: its data '{recipe.data.name}' records "
        "none and its model has no tokenizer. A run on data: text records one (vocabulary: chars, bytes or a "
        f"tokenizer file), and a model.name: hf run gets one from a model.pretrained folder holding {TOKENIZER_FILE}"
    )

"""The composition matrix's table (tests/test_matrix.py): how to make tiny data for each built-in data set and
tiny arguments for each built-in model. The matrix's rows are read from the registries; a registered name with
no entry here fails test_every_registered_component_has_tiny_settings ("add tiny settings for X").

A data entry writes its files into a folder and returns the recipe's `data` section and its Facts (what a
model needs to know to fit it); a model entry returns the recipe's `model` section and loss for those Facts.
`takes` is what a model family takes (pairing.py's words): a data kind outside it must be refused by `check`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import processes
from conftest import (
    REPO,
    cli_env,
    describe,
    fashion_images,
    fashion_labels,
    house_frame,
    write_idx_images,
    write_idx_labels,
    write_shards,
)

FEATURES, IMAGES, TOKENS, NAMED_TOKENS = "features", "images", "tokens", "named tokens"

# Registered data sets not in the matrix yet, each with the reason (said by the completeness test, never
# skipped silently): a newly registered name must be added to DATA or here, by hand.
NOT_YET: dict[str, str] = {}


@dataclass(frozen=True)
class Facts:
    """What a tiny data set yields: its kind, task, and the sizes a model must match."""

    kind: str
    task: str  # binary, multiclass, regression or sequence
    features: int = 0
    classes: int = 0
    channels: int = 0
    size: int = 0
    declared: bool = True  # pairing.py knows what it yields (npy and shards hold either features or tokens)


@dataclass(frozen=True)
class TinyData:
    """A tiny data set: its Facts, and `make(folder)`: writes its files, returns the recipe's data section."""

    facts: Facts
    make: Callable[[Path], dict[str, Any]]


@dataclass(frozen=True)
class ModelFamily:
    """One model family of a registered model name (hf has two: a causal LM and a sequence classifier)."""

    family: str
    takes: tuple[str, ...]
    settings: Callable[[Facts], tuple[dict[str, Any], str]]  # -> (model section, loss name)
    fits: Callable[[Facts], str | None] = lambda facts: None  # a start-up message fragment where shapes differ


def _loss(facts: Facts) -> str:
    return {"binary": "bce_with_logits", "multiclass": "cross_entropy", "regression": "mse"}.get(facts.task,
                                                                                               "cross_entropy")


def _outputs(facts: Facts) -> int:
    return facts.classes if facts.task == "multiclass" else 1


# --- data: folder -> (data section, Facts) --------------------------------------------------------------


def heart(folder: Path) -> dict[str, Any]:
    return {"num_points": 60}


def linear(folder: Path) -> dict[str, Any]:
    return {}  # 50 points


def csv(folder: Path) -> dict[str, Any]:
    house_frame(60).to_csv(folder / "houses.csv", index=False)
    data = {"path": str(folder / "houses.csv"), "target": "Price", "numeric": ["NumRooms"], "categorical": ["Alley"]}
    return data


def fashion_mnist(folder: Path) -> dict[str, Any]:
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 48), ("t10k", 20)):
        labels = fashion_labels(count, rng)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", fashion_images(labels, rng))
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return {"root": str(folder)}


def image_folder(folder: Path) -> dict[str, Any]:
    made = processes.run([sys.executable, REPO / "examples" / "make_image_folder.py", folder / "shapes",
                          "--per-class", "12", "--size", "28"], cli_env())
    assert made.returncode == 0, describe(made)
    return {"root": str(folder / "shapes"), "mode": "grey"}


def npy(folder: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", ((x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)))
    data = {"inputs": str(folder / "x.npy"), "targets": str(folder / "y.npy"), "class_names": ["a", "b", "c"]}
    return data


def shards(folder: Path) -> dict[str, Any]:
    root = write_shards(folder / "shards", (20, 20, 8), val=12)
    return {"root": str(root), "class_names": ["a", "b", "c"]}


def text(folder: Path) -> dict[str, Any]:
    corpus = folder / "corpus.txt"
    corpus.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(60)))
    data = {"path": str(corpus), "vocabulary": "bytes", "context": 16}
    return data


def hf_dataset(folder: Path) -> dict[str, Any]:
    """60 rows of 4 numbers and a ClassLabel of 3 classes, saved by datasets' save_to_disk."""
    import datasets

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    label = datasets.ClassLabel(names=["a", "b", "c"])
    table = datasets.Dataset.from_dict({"x": x.tolist(), "label": ((x[:, 0] > 0).astype(int) + (x[:, 1] > 0)).tolist()},
                                       features=datasets.Features({"x": datasets.Sequence(datasets.Value("float32")),
                                                                   "label": label}))
    table.save_to_disk(str(folder / "rows"))
    return {"path": str(folder / "rows"), "inputs": ["x"], "target": "label"}


def instructions(folder: Path) -> dict[str, Any]:
    """30 {prompt, response} sums, tokenized by a character tokenizers file whose <eos> ends each response."""
    from tokenizers import Tokenizer, models

    chars = [*" abcdefghijklmnopqrstuvwxyz0123456789+=", "<eos>"]
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    tokenizer.add_special_tokens(["<eos>"])
    tokenizer.save(str(folder / "tokenizer.json"))
    items = [{"prompt": f"{a}+{a + 1}=", "response": str(2 * a + 1)} for a in range(30)]
    (folder / "sums.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    return {"path": str(folder / "sums.jsonl"), "tokenizer": str(folder / "tokenizer.json"), "eos": "<eos>",
            "context": 16}


DATA: dict[str, TinyData] = {
    "heart": TinyData(Facts(FEATURES, "binary", features=2), heart),
    "linear": TinyData(Facts(FEATURES, "regression", features=1), linear),
    "csv": TinyData(Facts(FEATURES, "regression", features=4), csv),  # NumRooms, Alley: Pave, Grvl, missing
    "fashion_mnist": TinyData(Facts(IMAGES, "multiclass", classes=10, channels=1, size=28), fashion_mnist),
    "image_folder": TinyData(Facts(IMAGES, "multiclass", classes=3, channels=1, size=28), image_folder),
    "npy": TinyData(Facts(FEATURES, "multiclass", features=4, classes=3, declared=False), npy),
    "shards": TinyData(Facts(FEATURES, "multiclass", features=4, classes=3, declared=False), shards),
    "text": TinyData(Facts(TOKENS, "sequence", classes=256), text),
    "instructions": TinyData(Facts(NAMED_TOKENS, "sequence", classes=40), instructions),
    "hf_dataset": TinyData(Facts(FEATURES, "multiclass", features=4, classes=3), hf_dataset),
}


# --- models: Facts -> (model section, loss) ---------------------------------------------------------------


def mlp(facts: Facts) -> tuple[dict[str, Any], str]:
    inputs = facts.features or facts.channels * facts.size * facts.size or 16
    return {"in_features": inputs, "hidden": [8], "out_features": _outputs(facts)}, _loss(facts)


def lenet(facts: Facts) -> tuple[dict[str, Any], str]:
    return {"num_classes": _outputs(facts), "in_channels": facts.channels or 1}, _loss(facts)


def linear_regression(facts: Facts) -> tuple[dict[str, Any], str]:
    return {}, _loss(facts)


def gpt(facts: Facts) -> tuple[dict[str, Any], str]:
    # vocab_size comes from text data; on other data a user gives one, and the start-up check has its say
    vocab = {} if facts.kind == TOKENS else {"vocab_size": 16}
    return {"layers": 1, "width": 16, "heads": 2, "context": 16, **vocab}, "cross_entropy"


GPT2 = {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 256, "n_positions": 16,
        "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}


def hf_causal_lm(facts: Facts) -> tuple[dict[str, Any], str]:
    vocab = {"vocab_size": facts.classes} if facts.task == "sequence" else {}  # the data's tokens
    return {"architecture": "GPT2LMHeadModel", "config": {**GPT2, **vocab}}, "model"


def hf_sequence_classifier(facts: Facts) -> tuple[dict[str, Any], str]:
    return {"architecture": "GPT2ForSequenceClassification", "config": {**GPT2, "num_labels": _outputs(facts)}}, \
        _loss(facts)


def _one_feature(facts: Facts) -> str | None:
    """y = w * x + b: one feature in, one value out."""
    return None if facts.features == 1 else "gives outputs of shape"


def _one_class_per_item(facts: Facts) -> str | None:
    """A sequence classifier scores a whole sequence; the text data's targets are per position."""
    return "outputs must have shape" if facts.task == "sequence" else None


MODELS: dict[str, list[ModelFamily]] = {
    "mlp": [ModelFamily("mlp", (FEATURES, IMAGES), mlp)],
    "lenet": [ModelFamily("lenet", (IMAGES,), lenet)],
    "linear_regression": [ModelFamily("linear_regression", (FEATURES,), linear_regression, _one_feature)],
    "gpt": [ModelFamily("gpt", (TOKENS,), gpt)],
    "hf": [ModelFamily("hf_causal_lm", (TOKENS, NAMED_TOKENS), hf_causal_lm),
           ModelFamily("hf_sequence_classifier", (TOKENS, NAMED_TOKENS), hf_sequence_classifier,
                       _one_class_per_item)],
}

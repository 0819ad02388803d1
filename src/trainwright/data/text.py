"""Text for language models: local files as one stream of tokens, served as fixed-length windows.

The files (one file, or a folder's files matching `pattern`, in name order; by default the running
Python's own standard-library modules) are read as one text, cut at `max_bytes`, and turned into token
ids by a vocabulary: `chars` (the text's characters, sorted), `bytes` (its UTF-8 bytes, 256 ids) or a
Hugging Face `tokenizers` file. The ids are stored once, as a .npy file in a cache folder named by a
hash of the text and the vocabulary, and read back memory-mapped. The last `val_fraction` of the
stream validates; each split is cut into windows of `context` tokens (inputs) whose targets are the
same tokens one position on. A window is one item, so windows follow the global (seed, epoch) order
of data/loading.py as rows of a table do.

The vocabulary is recorded in the run dir (data.json: the task's class names are the tokens), so a run
encodes and decodes text (`predict --prompt`) without reading its corpus again.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from trainwright.data.arguments import check_data_arguments
from trainwright.data.bundle import DataBundle, Task, TensorSplit
from trainwright.distributed.processes import launch_rank
from trainwright.errors import UserError
from trainwright.run.files import atomic_open

Vocabulary = Literal["chars", "bytes", "tokenizer"]
CACHE_VARIABLE = "TRAINWRIGHT_CACHE"  # where token arrays are stored (default: ~/.cache/trainwright)


def stdlib_folder() -> Path:
    """The running interpreter's standard library (its .py files are a corpus every machine has)."""
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(path: Path | None, pattern: str) -> list[Path]:
    """The files of the corpus, in name order: `path` itself, or the files under it matching `pattern`."""
    root = stdlib_folder() if path is None else Path(path).expanduser()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise UserError(f"data.path: {root} does not exist (give a text file or a folder of them)")
    files = sorted(file for file in root.glob(pattern) if file.is_file())
    if not files:
        raise UserError(f"data.pattern: no file under {root} matches {pattern!r}")
    return files


def read_corpus(files: list[Path], max_bytes: int | None) -> bytes:
    """The files' bytes one after the other, cut at `max_bytes`."""
    chunks, total = [], 0
    for file in files:
        data = file.read_bytes()
        if max_bytes is not None and total + len(data) > max_bytes:
            chunks.append(data[: max_bytes - total])
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


MOSTLY_BINARY = 0.3  # a text with more than this share of bytes that are not UTF-8 is refused


def check_utf8(text: bytes, files: list[Path]) -> None:
    """Bytes that are not UTF-8 become U+FFFD in a `chars` or tokenizer vocabulary: say how many (and where
    the first is); refuse a text that is mostly not UTF-8 (a binary file read as text)."""
    invalid = len(text) - len(text.decode("utf-8", errors="ignore").encode("utf-8"))
    if not invalid:
        return
    first = 0
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as exc:
        first = exc.start
    where = f"byte {first}"
    for file in files:  # which file the first one is in (the text is the files one after the other)
        size = file.stat().st_size
        if first < size:
            where = f"byte {first} of {file}"
            break
        first -= size
    share = invalid / len(text)
    if share > MOSTLY_BINARY:
        raise UserError(
            f"data.path: {invalid:,} of the text's {len(text):,} bytes ({share:.0%}) are not UTF-8 text (the first at "
            f"{where}): is it a binary file? Give text files (data.pattern picks them), or data.vocabulary=bytes to "
            "model raw bytes"
        )
    if launch_rank() == 0:
        print(f"trainwright: data.path: {invalid:,} bytes of the text are not UTF-8 (the first at {where}) and are "
              "read as U+FFFD; save the files as UTF-8, or use data.vocabulary=bytes", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Codec:
    """Text <-> token ids for one vocabulary: `tokens` (id -> its text, what data.json records as the
    task's class names), and for `tokenizer` vocabularies the tokenizer file."""

    vocabulary: Vocabulary
    tokens: tuple[str, ...]
    tokenizer: Path | None = None

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int64); a character outside a `chars` vocabulary is a UserError."""
        if self.vocabulary == "bytes":
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
        if self.vocabulary == "tokenizer":
            return np.asarray(self._tokenizer().encode(text).ids, dtype=np.int64)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        known = np.frombuffer("".join(self.tokens).encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(known, codes)
        missing = (ids >= len(known)) | (known[np.minimum(ids, len(known) - 1)] != codes)
        unknown = sorted({chr(c) for c in codes[missing].tolist()})
        if unknown:
            raise UserError(
                f"the prompt holds characters the run's vocabulary has not (its training text's): {unknown!r}"
            )
        return ids.astype(np.int64)

    def decode(self, ids: list[int]) -> str:
        if self.vocabulary == "bytes":
            return bytes(ids).decode("utf-8", errors="replace")
        if self.vocabulary == "tokenizer":
            return self._tokenizer().decode(ids)
        return "".join(self.tokens[i] for i in ids)

    def _tokenizer(self) -> Any:
        from tokenizers import Tokenizer

        if self.tokenizer is None or not Path(self.tokenizer).is_file():
            raise UserError(f"data.tokenizer: tokenizer file {self.tokenizer} not found")
        return Tokenizer.from_file(str(self.tokenizer))

    def record(self) -> dict[str, Any]:
        """What preprocessing in data.json holds (the tokens themselves are the task's class names)."""
        return {"vocabulary": self.vocabulary, "tokenizer": None if self.tokenizer is None else str(self.tokenizer)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Codec:
        """The codec of a run, from its data.json."""
        preprocessing, task = record.get("preprocessing", {}), record.get("task", {})
        tokenizer = preprocessing.get("tokenizer")
        return cls(
            preprocessing["vocabulary"], tuple(task["class_names"]), None if tokenizer is None else Path(tokenizer)
        )


def make_codec(text: bytes, vocabulary: Vocabulary, tokenizer: Path | None) -> Codec:
    """The vocabulary of `text`: its characters (`chars`), all 256 bytes, or a tokenizer file's tokens."""
    if tokenizer is not None:
        vocabulary = "tokenizer"
    if vocabulary == "bytes":
        return Codec("bytes", tuple(bytes([i]).decode("latin-1") for i in range(256)))
    if vocabulary == "tokenizer":
        if tokenizer is None:
            raise UserError("data.vocabulary: tokenizer needs data.tokenizer (a Hugging Face tokenizer.json file)")
        codec = Codec("tokenizer", (), Path(tokenizer))
        model = codec._tokenizer()
        size = model.get_vocab_size()
        return Codec("tokenizer", tuple(model.id_to_token(i) or "" for i in range(size)), Path(tokenizer))
    if vocabulary != "chars":
        raise UserError(f"data.vocabulary must be chars, bytes or tokenizer, got {vocabulary!r}")
    return Codec("chars", tuple(sorted(set(_as_text(text)))))


def _as_text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def cache_folder() -> Path:
    """Where token arrays are stored: $TRAINWRIGHT_CACHE, else ~/.cache/trainwright (XDG_CACHE_HOME)."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trainwright"


def token_array(text: bytes, codec: Codec) -> np.ndarray:
    """The text's token ids (int64), memory-mapped from the cache, tokenized and stored there on first use.
    Several processes may store the same array at once: each writes its own file and renames it in place."""
    key = hashlib.sha256()
    key.update(repr(codec.tokens).encode())
    key.update(codec.vocabulary.encode())
    key.update(text)
    path = cache_folder() / "tokens" / f"{key.hexdigest()[:32]}.npy"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = (
            codec.encode(_as_text(text))
            if codec.vocabulary != "bytes"
            else np.frombuffer(text, np.uint8).astype(np.int64)
        )
        with atomic_open(path, "wb") as file:  # (np.save on a path would add '.npy' to the name)
            np.save(file, ids)
    return np.load(path, mmap_mode="c")  # copy-on-write: writable views (as torch wants), the file untouched


def windows(tokens: torch.Tensor, context: int) -> TensorSplit:
    """Non-overlapping windows of `context` tokens and their targets (the next token of each), as views of
    `tokens` (nothing is copied until a batch is indexed)."""
    count = (len(tokens) - 1) // context
    return TensorSplit(
        tokens[: count * context].view(count, context), tokens[1 : count * context + 1].view(count, context)
    )


def text(
    path: Path | None = None,
    pattern: str = "**/*",
    max_bytes: int | None = None,
    vocabulary: Vocabulary = "chars",
    tokenizer: Path | None = None,
    context: int = 128,
    val_fraction: float = 0.1,
) -> DataBundle:
    """A language-modelling data set of local text (see the module's docstring); `path` None: the running
    Python's standard library (with `pattern: "*.py"`, its top-level modules)."""
    check_data_arguments({"context": context, "val_fraction": val_fraction})
    files = corpus_files(path, pattern)
    corpus = read_corpus(files, max_bytes)
    if vocabulary != "bytes" or tokenizer is not None:
        check_utf8(corpus, files)
    codec = make_codec(corpus, vocabulary, tokenizer)
    tokens = torch.from_numpy(token_array(corpus, codec))
    cut = int(len(tokens) * (1.0 - val_fraction))
    train, val = windows(tokens[:cut], context), windows(tokens[cut:], context)
    if len(train) == 0 or len(val) == 0:
        raise UserError(
            f"data: {len(tokens)} tokens make {len(train)} training and {len(val)} validation windows of "
            f"data.context={context}; give more text or a shorter context"
        )
    sources = {"corpus": files[0]} if len(files) == 1 else {}
    if codec.tokenizer is not None:
        sources["tokenizer"] = codec.tokenizer
    return DataBundle(
        train=train, val=val, task=Task("sequence", class_names=codec.tokens), sources=sources,
        preprocessing={**codec.record(), "files": len(files), "tokens": len(tokens)},
    )

"""The final weights file of a run, `model.safetensors`: byte-identical for equal weights."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

from trainwright.files import atomic_path


def save_weights(weights: dict[str, torch.Tensor], path: Path, metadata: dict[str, str], replace: bool = True) -> None:
    """Write a model's weights (its state dict; a tied parameter under one name, see ties.py) as safetensors,
    atomically (unless `replace`, only where nothing is: see atomic_path), with the metadata in sorted order.

    safetensors stores metadata from a hash map, so its order (and the file's bytes) would vary from
    process to process; sorting it makes equal weights give byte-identical files.
    """
    with atomic_path(path, replace) as tmp:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp), metadata=metadata)
        with os.fdopen(os.open(tmp, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC), "r+b") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
            header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
            canonical = json.dumps(header, separators=(",", ":")).encode()
            file.seek(8)
            file.write(canonical.ljust(length))  # same keys and values, so never longer than before

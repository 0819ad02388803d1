"""trainwright: recipe-driven PyTorch training on HuggingFace Accelerate.

`trainwright.load_run(RUN_DIR)` gives a trained run's model and `predict`/`evaluate` (trainwright.inference);
it is imported on first use, so `import trainwright` stays light."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainwright.inference import load_run

__version__ = "0.1.0"
__all__ = ["load_run", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "load_run":
        from trainwright.inference import load_run

        return load_run
    raise AttributeError(f"module 'trainwright' has no attribute {name!r}")

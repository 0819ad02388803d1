"""trainwright: recipe-driven PyTorch training on HuggingFace Accelerate.

`trainwright.load_run(RUN_DIR)` gives a trained run's model and `predict`/`evaluate` (trainwright.finished.inference);
`trainwright.Callback` is the base class of a recipe's `callbacks` (trainwright.training.callbacks). Both are
imported on first use, so `import trainwright` stays light."""

from __future__ import annotations

TYPE_CHECKING = False  # (typing itself is not imported: this module is the first of every command)
if TYPE_CHECKING:
    from typing import Any

    from trainwright.finished.inference import load_run
    from trainwright.training.callbacks import Callback, RunView

__version__ = "0.1.0"
__all__ = ["Callback", "RunView", "load_run", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "load_run":
        from trainwright.finished.inference import load_run

        return load_run
    if name in ("Callback", "RunView"):
        from trainwright.training import callbacks

        return getattr(callbacks, name)
    raise AttributeError(f"module 'trainwright' has no attribute {name!r}")

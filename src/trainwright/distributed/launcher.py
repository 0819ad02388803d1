"""What the launcher asked for, reconciled with the recipe (mixed precision and the parallel strategy),
what a failed worker tells it, and which process the launcher is.

`accelerate launch` passes its choices to the processes it starts through environment variables:
`--mixed_precision` or a config's `mixed_precision` as ACCELERATE_MIXED_PRECISION, a config with
`distributed_type: FSDP` as ACCELERATE_USE_FSDP=true. Accelerate sets ACCELERATE_MIXED_PRECISION=no
when nothing was asked, so 'no' from the launcher cannot be told apart from no choice at all and
never contradicts a recipe.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from trainwright.errors import UserError
from trainwright.recipe import Recipe
from trainwright.run.files import write_json_atomic

PRECISION_VARIABLE = "ACCELERATE_MIXED_PRECISION"
FSDP_VARIABLE = "ACCELERATE_USE_FSDP"
ERROR_FILE_VARIABLE = "TORCHELASTIC_ERROR_FILE"  # where torchrun's agent reads a failed worker's reason
TORCHRUN_VARIABLE = "TORCHELASTIC_RUN_ID"  # set by torchrun's agent for every worker it starts
AGENT_STORE_VARIABLE = "TORCHELASTIC_USE_AGENT_STORE"  # "True": the agent hosts the store at MASTER_ADDR:MASTER_PORT
STORE_PROBE_SECONDS = 5.0

# This process's parent when trainwright was imported (the CLI imports this module first thing): under
# torchrun (accelerate launch with several processes), the agent that started it.
_PARENT_AT_START = os.getppid()


def launcher_precision() -> str | None:
    """The precision the launcher asked for (bf16, fp16, ...), or None when it asked for none."""
    value = os.environ.get(PRECISION_VARIABLE, "").strip().lower()
    return value if value not in ("", "no") else None


def resolve_precision(recipe: Recipe) -> str:
    """'no', 'bf16' or 'fp16': the recipe's value, or the launcher's where the recipe says auto."""
    asked, launched = recipe.trainer.mixed_precision, launcher_precision()
    if launched is not None and launched not in ("bf16", "fp16"):
        raise UserError(f"the launcher asks for mixed precision '{launched}'; trainwright trains in no, bf16 or fp16")
    if asked == "auto":
        return launched or "no"
    if launched is not None and launched != asked:
        raise UserError(
            f"trainer.mixed_precision={asked} contradicts the launcher's mixed precision '{launched}' "
            f"(accelerate launch --mixed_precision, the config's mixed_precision or {PRECISION_VARIABLE}); "
            "change one of them, or set trainer.mixed_precision=auto to follow the launcher"
        )
    return asked


def launcher_wants_fsdp() -> bool:
    return os.environ.get(FSDP_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def resolve_strategy(recipe: Recipe) -> str:
    """'ddp' or 'fsdp': the recipe's value, or FSDP where the launcher's config says so and the recipe
    says auto."""
    asked = recipe.distributed.strategy
    if launcher_wants_fsdp():
        if asked == "ddp":
            raise UserError(
                "distributed.strategy=ddp contradicts the launcher, whose accelerate config has distributed_type: "
                "FSDP; launch with a DDP config (e.g. accelerate_configs/cpu_2proc.yaml), or set "
                "distributed.strategy=fsdp (or auto)"
            )
        return "fsdp"
    return "ddp" if asked == "auto" else asked


def report_to_launcher(message: str) -> None:
    """Under torchrun (accelerate launch with several processes), hand the agent the error message: its
    failure report, which ends the launcher's output, then shows it as the root cause instead of
    'To enable traceback see: ...'. (The report and the traceback above it are the launcher's and cannot
    be shortened from a worker.) Does nothing without a launcher."""
    error_file = os.environ.get(ERROR_FILE_VARIABLE)
    if error_file:
        write_json_atomic(Path(error_file), {"message": message, "timestamp": int(time.time())})


def launcher_pid() -> int | None:
    """The pid of the torchrun agent that started this worker, or None outside torchrun. (A process without
    torchrun has no launcher to outlive: the parent of a plain `trainwright train` is a shell, whose exit,
    with nohup or a closed terminal, must not stop it.)"""
    return _PARENT_AT_START if os.environ.get(TORCHRUN_VARIABLE) else None


def gone_launcher_store() -> str | None:
    """The address of the store that this worker's launcher hosts when nothing listens there any more (the
    launcher is gone); None when it answers, or when the launcher hosts none. A launcher that dies before
    trainwright is imported leaves its worker re-parented already, so the parent recorded at import is not
    the launcher and watching it tells nothing; its store, where every worker connects, is gone with it.
    A plain TCP connection, closed at once: a store client would retry for its whole timeout and print
    a C++ traceback per try."""
    if os.environ.get(TORCHRUN_VARIABLE) is None or os.environ.get(AGENT_STORE_VARIABLE) != "True":
        return None
    host, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    if not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host, int(port)), timeout=STORE_PROBE_SECONDS).close()
    except ConnectionRefusedError:
        return f"{host}:{port}"
    except OSError:  # unreachable or slow: not proof that the launcher is gone; the connection decides
        return None
    return None

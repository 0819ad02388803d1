"""The process context of a run: which process this is, how many there are, where tensors live, and the
collectives the run needs. Built once from the Accelerator; `Processes.single()` for one process
(inference, tests)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

# The variables a launcher (torchrun, MPI) sets for a process's rank, read as Accelerate reads them.
_RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMI_RANK")


def launch_rank() -> int:
    """This process's rank as its launcher set it (0 without a launcher), known before any process group
    exists: Accelerate reads the same variables, so it equals `Processes.rank` once training starts."""
    for name in _RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _nothing() -> None:
    return None


def _gather_objects(parts: list[Any]) -> list[Any]:
    from accelerate.utils import gather_object

    return gather_object(parts)  # every process's list, concatenated in rank order


@dataclass(frozen=True)
class Processes:
    """Rank, world size, device, strategy, and the collectives (every process must call them together)."""

    rank: int
    world_size: int
    device: torch.device
    strategy: str = "ddp"  # how the processes hold the model: 'ddp' (a whole copy each) or 'fsdp' (a shard each)
    barrier: Callable[[], None] = _nothing
    _reduce: Callable[[torch.Tensor, str], torch.Tensor] | None = None
    _gather: Callable[[list[Any]], list[Any]] | None = None

    @property
    def is_main(self) -> bool:
        """The one process that writes shared files and prints."""
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `tensor` over all processes."""
        return tensor if self._reduce is None else self._reduce(tensor, "sum")

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise mean of `tensor` over all processes."""
        return tensor if self._reduce is None else self._reduce(tensor, "mean")

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise maximum of `tensor` over all processes."""
        return tensor if self._reduce is None else self._reduce(tensor, "max")

    def gather(self, part: Any) -> list[Any]:
        """Every process's `part` (any picklable object), in rank order, on every process."""
        return [part] if self._gather is None else self._gather([part])

    @classmethod
    def from_accelerator(cls, accelerator: Accelerator, strategy: str = "ddp") -> Processes:
        if accelerator.num_processes == 1:
            return cls(rank=0, world_size=1, device=accelerator.device, strategy=strategy)
        return cls(
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            device=accelerator.device,
            strategy=strategy,
            barrier=accelerator.wait_for_everyone,
            _reduce=accelerator.reduce,
            _gather=_gather_objects,
        )

    @classmethod
    def single(cls, device: torch.device | str = "cpu") -> Processes:
        import torch

        return cls(rank=0, world_size=1, device=torch.device(device))

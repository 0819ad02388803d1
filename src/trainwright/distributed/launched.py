"""`eval` and `predict` under a launcher (`accelerate launch`, torchrun): the launch's processes share the
work. Each scores or predicts its contiguous slice of the items; evaluation adds up sums and counts exactly
(evaluation.evaluate) and predictions are gathered in order, so every process holds what one process alone
would have found, and the main process alone prints or writes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from trainwright.distributed.processes import Processes


def launched_processes(device: torch.device) -> Processes:
    """The processes of the launch this one belongs to (on the CPU over gloo, or one GPU each when `device`
    is CUDA), or `Processes.single(device)` without a launcher (or a launch of one process)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return Processes.single(device)
    from accelerate import Accelerator

    from trainwright.distributed.accelerate_compat import keep_accelerate_fsdp_off

    keep_accelerate_fsdp_off()  # a whole model per process: nothing is sharded or wrapped
    return Processes.from_accelerator(Accelerator(cpu=device.type != "cuda", mixed_precision="no"))


@contextlib.contextmanager
def end_launched(processes: Processes) -> Iterator[None]:
    """Close the launch's process group when the command is done with it, also after an error (a no-op for
    one process): a worker that exits with its group open can abort while exiting (exiting.py)."""
    try:
        yield
    finally:
        import torch.distributed as dist

        from trainwright.run.exiting import closed_a_group

        if processes.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
            closed_a_group()


def share(count: int, processes: Processes) -> tuple[int, int]:
    """This process's contiguous share [start, stop) of `count` items (as evaluation shares a split)."""
    share_sizes = [len(part) for part in torch.tensor_split(torch.arange(count), processes.world_size)]
    start = sum(share_sizes[: processes.rank])
    return start, start + share_sizes[processes.rank]


def gathered_rows(part: torch.Tensor, processes: Processes) -> torch.Tensor:
    """Every process's `part` (rows of one batch, on the CPU) joined in rank order: the whole batch."""
    if processes.world_size == 1:
        return part
    parts = [p for p in processes.gather(part) if len(p)]
    return torch.cat(parts) if parts else part

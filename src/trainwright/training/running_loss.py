"""The training loss between two log lines, kept without arithmetic in the step."""

from __future__ import annotations

import torch

from trainwright.distributed.processes import Processes

FOLD_AT = 256  # losses kept at most before they are summed (a log interval of a million steps stays small)


class RunningLoss:
    """The sum and count of the micro-batch losses since the last log line.

    `add` keeps the (detached) loss tensor: a float64 tensor addition in every step costs about 1.5 µs, a
    visible part of a tiny model's step. The kept losses are added to the sum when it is read or FOLD_AT of
    them are kept, left to right in float64: the same value a float64 running sum holds, so a run resumed from
    a checkpoint taken between two log lines logs what an uninterrupted one logs."""

    def __init__(self, total: float = 0.0, count: int = 0) -> None:
        self._total, self._count = total, count
        self._kept: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor) -> None:
        """Count one micro-batch's loss (a detached tensor with one element)."""
        self._kept.append(loss)
        if len(self._kept) == FOLD_AT:
            self._fold()

    def _fold(self) -> None:
        if not self._kept:
            return
        total = self._total
        for value in torch.stack(self._kept).view(-1).tolist():  # one copy to the host; float32 -> float64 is exact
            total += value
        self._total, self._count = total, self._count + len(self._kept)
        self._kept.clear()

    def read(self) -> tuple[float, int]:
        """The sum (float64) and number of the losses added since the last reset."""
        self._fold()
        return self._total, self._count

    def read_over(self, processes: Processes) -> tuple[float, int]:
        """The mean over processes of their sums (float64), and this process's count of losses."""
        total, count = self.read()
        return processes.mean(torch.tensor(total, dtype=torch.float64, device=processes.device)).item(), count

    def reset(self) -> None:
        self._kept.clear()
        self._total, self._count = 0.0, 0

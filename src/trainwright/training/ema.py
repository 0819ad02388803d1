"""Weight averaging (trainer.ema): an exponential moving average of the floating-point parameters that train.

After every `every_steps`-th optimizer step the average moves towards the weights,
`average += (1 - decay) * (weights - average)`; up to `start_step` it is set to them instead, so the
average starts from trained weights rather than the initial ones. The averages are saved in every
checkpoint (`ema.safetensors`, under the parameters' state-dict names) and restored on resume, so a resumed
run ends bitwise equal to an uninterrupted one. Under fsdp the parameters are sharded DTensors, and so are
their averages: each process averages its own shards, and a checkpoint holds them as shards (`ema/`).
Validation and the final `model.safetensors` use them; the raw weights stay in the checkpoints and in
`model_raw.safetensors`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from trainwright.checkpoint.format import EMA_FILE
from trainwright.checkpoint.ties import state_dict_name
from trainwright.recipe import EmaConfig


class WeightAverage:
    """The averaged copies of a model's floating-point parameters that train (a tied parameter once; a frozen
    one is its own average)."""

    def __init__(self, model: nn.Module, config: EmaConfig) -> None:
        self.config = config
        named = [
            (state_dict_name(name), p)
            for name, p in model.named_parameters()
            if p.dtype.is_floating_point and p.requires_grad
        ]
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        with torch.no_grad():
            self.averages = [p.detach().clone() for p in self.params]

    def update(self, step: int) -> None:
        """Take the weights after optimizer step `step` into the average (when `every_steps` says so)."""
        if step % self.config.every_steps:
            return
        with torch.no_grad():
            weights = [p.detach() for p in self.params]
            if step <= self.config.start_step:
                _copy(self.averages, weights)
            else:
                torch._foreach_lerp_(self.averages, weights, 1.0 - self.config.decay)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The averages by state-dict name (the live tensors: copy them to keep them)."""
        return dict(zip(self.names, self.averages))

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore the averages saved by `tensors()`; names that differ raise KeyError."""
        if set(tensors) != set(self.names):
            raise KeyError(f"{EMA_FILE} holds {sorted(set(tensors) ^ set(self.names))[:3]} unlike this model")
        with torch.no_grad():
            for name, average in zip(self.names, self.averages):
                average.copy_(tensors[name])

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """While inside, the model's parameters hold the averages; the raw weights come back exactly after."""
        with torch.no_grad():
            raw = [p.detach().clone() for p in self.params]
            _copy(self.params, self.averages)
        try:
            yield
        finally:
            with torch.no_grad():
                _copy(self.params, raw)


def _copy(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor]) -> None:
    """Copy tensor by tensor (sharded DTensors under fsdp: each process copies its own shards)."""
    for target, source in zip(targets, sources):
        target.copy_(source)


def averaged(average: WeightAverage | None) -> contextlib.AbstractContextManager[None]:
    """`average.swapped_in()`, or nothing when the run keeps no average."""
    return contextlib.nullcontext() if average is None else average.swapped_in()

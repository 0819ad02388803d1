"""The PyTorch Lightning row: the same model, loss, optimizer and DataLoader in a LightningModule,
trained by a Trainer set up as a user benchmarking it would (no logger, checkpoints, bar or summary)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader


class _Module(pl.LightningModule):
    def __init__(self, model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer) -> None:
        super().__init__()
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        return self.loss_fn(self.model(inputs), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer


class _EpochTimer(pl.Callback):
    """Seconds from the start of the training epoch to its end (Lightning's hooks, so no set-up counted)."""

    seconds = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.started


def fit_one_epoch(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, loader: DataLoader) -> float:
    timer = _EpochTimer()
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer],
    )
    trainer.fit(_Module(model, loss_fn, optimizer), loader)
    return timer.seconds

"""A step of the user's own for tests/test_step_component.py (named by import path `denoising_step:Denoise`,
with tests/ on PYTHONPATH), written against trainwright's documented Step protocol alone: the inputs with
Gaussian noise go into the model, which is scored (by the recipe's loss) on giving back the clean inputs."""

from __future__ import annotations

import torch

from trainwright.step import Scored, Step


class Denoise(Step):
    """Scores a denoising loss: loss(model(inputs + noise), inputs); the data's targets are not used."""

    def __init__(self, loss_fn: torch.nn.Module, task, noise: float = 0.1) -> None:
        super().__init__(loss_fn, task)
        self.noise = noise

    def score(self, model: torch.nn.Module, batch) -> Scored:
        inputs, _ = batch
        outputs = model(inputs + self.noise * torch.randn_like(inputs))
        return Scored(self.loss_fn(outputs, inputs), outputs, inputs)


"""Components for tests/test_step.py: the heart points served as batches of named tensors, and models that
take them (one returns its outputs, one computes its own loss as a Hugging Face model does)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from trainwright.data.bundle import DataBundle, TensorSplit
from trainwright.data.synthetic import heart


class Named(Dataset):
    """A TensorSplit's items as {'points': ..., 'labels': ...} (the DataLoader stacks them into mappings)."""

    def __init__(self, split: TensorSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"points": self.split.inputs[index], "labels": self.split.targets[index]}


def named_heart(num_points: int = 2000) -> DataBundle:
    """The heart data set of the same points, each batch a mapping."""
    plain = heart(num_points)
    return DataBundle(train=Named(plain.train), val=Named(plain.val), task=plain.task)


class HeartNet(nn.Module):
    """heart.yaml's 2-72-36-1 MLP with a sigmoid, taking the points by name; with `own_loss` it takes the
    labels too and returns {'loss', 'logits'} (its BCE), as a Hugging Face model given `labels` does."""

    def __init__(self, own_loss: bool = False) -> None:
        super().__init__()
        self.own_loss = own_loss
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(2, 72), nn.ReLU(), nn.Linear(72, 36), nn.ReLU(), nn.Linear(36, 1), nn.Sigmoid()
        )

    def forward(self, points: torch.Tensor, labels: torch.Tensor | None = None):
        outputs = self.layers(points)
        if not self.own_loss:
            return outputs
        loss = nn.functional.binary_cross_entropy(outputs.float(), labels)
        return {"loss": loss, "logits": torch.logit(outputs)}  # logits, as a Hugging Face model returns them


def heart_net(own_loss: bool = False) -> HeartNet:
    return HeartNet(own_loss)

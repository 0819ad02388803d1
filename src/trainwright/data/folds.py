"""k-fold cross-validation splits (`cv.folds`, `cv.fold`): which items validate and which train.

Items are dealt to the folds in a random order drawn once from the recipe's seed, so every fold run of
one CV sees the same folds; for classifiers (`cv.stratify`) each class is dealt in turn, so every fold
holds the classes in about the same proportions (as scikit-learn's StratifiedKFold). A data set whose
validation split is its fixed test split (FashionMNIST) is folded over its training split; the others
over training and validation data together. A data set builder that takes a `fold` argument (csv) splits
its rows itself, so that its preprocessing statistics come from the training folds only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainwright.data.bundle import DataBundle, TensorSplit
from trainwright.data.tasks import kind_of
from trainwright.errors import UserError


@dataclass(frozen=True)
class Fold:
    """Fold `index` (1-based) of `count`, dealt from `seed`."""

    index: int
    count: int
    seed: int
    stratify: bool = True

    def rows(self, total: int, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(training rows, validation rows) of `total` items, each in ascending order; `labels`: class
        index per item, to stratify by (None: not stratified)."""
        if self.count > total:
            raise UserError(f"cv.folds={self.count} is more folds than the {total} items to split; use at most {total}")
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(total, generator=generator)
        if labels is not None and self.stratify:
            order = order[torch.argsort(labels[order], stable=True)]  # class by class, each in the random order
        fold_of = torch.empty(total, dtype=torch.long)
        fold_of[order] = torch.arange(total) % self.count
        chosen = fold_of == self.index - 1
        return chosen.logical_not().nonzero().flatten(), chosen.nonzero().flatten()


def fold_of(bundle: DataBundle, fold: Fold) -> DataBundle:
    """The bundle with fold `fold.index` as its validation split and the other folds as its training split."""
    held = [bundle.train] if bundle.test is not None else [bundle.train, bundle.val]
    parts = [part for part in held if isinstance(part, TensorSplit)]
    if len(parts) < len(held):
        raise UserError("cv: this data set is not held as tensors (TensorSplit); cross-validation needs that")
    inputs = torch.cat([part.inputs for part in parts])
    targets = torch.cat([part.targets for part in parts])
    labels = targets.reshape(len(targets), -1)[:, 0].long() if kind_of(bundle.task).stratified else None
    train_rows, val_rows = fold.rows(len(inputs), labels)
    val = TensorSplit(inputs[val_rows], targets[val_rows])
    return DataBundle(
        train=TensorSplit(inputs[train_rows], targets[train_rows]), val=val, task=bundle.task, test=bundle.test,
        describe_input=None, sources=bundle.sources, preprocessing=bundle.preprocessing,
    )

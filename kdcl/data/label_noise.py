"""Synthetic label noise on the training part: `data.label_noise=R` flips exactly round(R·N) of its N labels.

Kinds: `symmetric` moves a flipped label to one of the other classes uniformly at random; `pair` moves
class c to c+1 (mod C), the class-dependent flip of Han et al. (Co-teaching, 2018). Which examples flip
and where they go is a property of the example, drawn once per source index from `label_noise_seed`
(not the run's seed), so the teacher trained once and every seed of a student sweep see the same wrong
labels on the examples they share. Validation and test labels are never touched: the noisy labels live
in a copy of the training source that only the training part reads, and the clean ones stay beside
them (`clean_labels`) so the curriculum can report how many noisy examples it admitted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, TensorDataset


@dataclass(frozen=True)
class NoisyLabels:
    labels: torch.Tensor  # every source example's label, flipped where `flipped`
    flipped: torch.Tensor  # source indices whose label was changed (sorted)


def flip_labels(labels: torch.Tensor, positions: list[int], rate: float, kind: str, num_classes: int,
                seed: int) -> NoisyLabels:  # fmt: skip
    """`labels` (of the whole source) with exactly round(rate·len(positions)) of `positions` flipped to
    another class. The draws are made for every source index, so they do not depend on `positions`."""
    g = torch.Generator().manual_seed(int(seed))
    rank_key = torch.rand(len(labels), generator=g)  # the examples with the lowest keys flip
    offset = torch.randint(1, max(2, num_classes), (len(labels),), generator=g)  # symmetric: 1..C-1 classes on
    pos = torch.as_tensor(positions, dtype=torch.long)
    n_flip = round(rate * len(pos))
    flipped = pos[torch.argsort(rank_key[pos], stable=True)[:n_flip]].sort().values
    step = offset[flipped] if kind == "symmetric" else torch.ones_like(flipped)
    noisy = labels.clone()
    noisy[flipped] = (labels[flipped] + step) % num_classes
    return NoisyLabels(noisy, flipped)


class Relabelled(Dataset):
    """A source whose labels are replaced (images read from `base`); kdcl's loaders stop unwrapping here."""

    def __init__(self, base: Dataset, labels: torch.Tensor, clean_labels: torch.Tensor):
        self.base, self.targets, self.clean_labels = base, labels, clean_labels

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        return self.base[i][0], self.targets[i]


class NoisyTensorDataset(TensorDataset):
    """An in-memory source (images shared, not copied) with noisy labels and the clean ones beside them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, clean_labels: torch.Tensor):
        super().__init__(images, labels)
        self.clean_labels = clean_labels


def with_noisy_labels(source: Dataset, clean: torch.Tensor, noisy: NoisyLabels) -> Dataset:
    """The training source as the training part reads it: the same images, the noisy labels."""
    if isinstance(source, TensorDataset):
        return NoisyTensorDataset(source.tensors[0], noisy.labels, clean)
    return Relabelled(source, noisy.labels, clean)

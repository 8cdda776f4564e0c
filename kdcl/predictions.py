"""A model's outputs on a split, by a plain inference loop in this process: what the report card and the
cascade compare. Same examples, order, batches and normalisation as the stage's own test."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader


@dataclass(frozen=True)
class Predictions:
    """Logits (N, classes, float32, on the CPU) and the true labels (N,) of one model on one split."""

    logits: torch.Tensor
    labels: torch.Tensor

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(-1)

    @property
    def predicted(self) -> torch.Tensor:
        return self.logits.argmax(-1)

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.labels).float().mean()) if len(self.labels) else math.nan


def batch_limit(limit, batches: int) -> int:
    """How many of `batches` a Trainer's limit_test_batches lets through (an int: that many; a fraction: that share)."""
    if limit is None or (isinstance(limit, float) and limit >= 1.0):
        return batches
    if isinstance(limit, float):
        return int(batches * limit)
    return min(int(limit), batches)


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader, normalize, seen: list[int] | None = None, limit=None) -> Predictions:
    """`model`'s logits on `loader`'s batches (normalised like the stage's data), classes not in `seen`
    masked out as the stage's own predictions are (kdcl.module.DistillationModule.predict_seen)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    logits, labels = [], []
    for i, (x, y) in enumerate(loader):
        if i >= batch_limit(limit, len(loader)):
            break
        out = model(normalize(x.to(device))).float()
        if seen is not None:
            unseen = torch.ones(out.shape[-1], dtype=torch.bool, device=device)
            unseen[seen] = False
            out = out.masked_fill(unseen, -1e4)
        logits.append(out.cpu())
        labels.append(y.long())
    model.cpu()
    if not logits:
        return Predictions(torch.empty(0, 0), torch.empty(0, dtype=torch.long))
    return Predictions(torch.cat(logits), torch.cat(labels))

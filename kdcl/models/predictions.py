"""A model's outputs on a split, by a plain inference loop in this process: what the report card and the
cascade compare. Same examples, order, batches and normalisation as the stage's own test."""

from __future__ import annotations

import math
import os
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


def unseen_mask(num_classes: int, seen: list[int] | None, device=None) -> torch.Tensor | None:
    """True for the classes a class-incremental stage has not seen yet; None when it has seen them all."""
    if seen is None:
        return None
    unseen = torch.ones(num_classes, dtype=torch.bool, device=device)
    unseen[seen] = False
    return unseen if unseen.any() else None


def mask_unseen(logits: torch.Tensor, seen: list[int] | None) -> torch.Tensor:
    """Logits with unseen classes at a large negative (not -inf: softmax-based losses stay finite)."""
    unseen = unseen_mask(logits.shape[-1], seen, logits.device)
    return logits if unseen is None else logits.masked_fill(unseen, -1e4)


def batch_limit(limit, batches: int) -> int:
    """How many of `batches` a Trainer's limit_test_batches lets through (an int: that many; a fraction: that share)."""
    if limit is None or (isinstance(limit, float) and limit >= 1.0):
        return batches
    if isinstance(limit, float):
        return int(batches * limit)
    return min(int(limit), batches)


def inference_device() -> torch.device:
    """Where kdcl runs a model outside the Trainer (teacher passes, scoring, report cards, the cascade): this
    process's GPU (its DDP rank's), else the CPU. The one device picker of kdcl."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader, normalize, seen: list[int] | None = None, limit=None) -> Predictions:
    """`model`'s logits on `loader`'s batches (normalised like the stage's data), classes not in `seen`
    masked out as the stage's own predictions are (kdcl.training.module.DistillationModule.predict_seen)."""
    device = inference_device()
    model = model.to(device).eval()
    logits, labels = [], []
    for i, (x, y) in enumerate(loader):
        if i >= batch_limit(limit, len(loader)):
            break
        logits.append(mask_unseen(model(normalize(x.to(device))).float(), seen).cpu())
        labels.append(y.long())
    model.cpu()
    if not logits:
        return Predictions(torch.empty(0, 0), torch.empty(0, dtype=torch.long))
    return Predictions(torch.cat(logits), torch.cat(labels))

"""A model's outputs on a split, by a plain inference loop in this process: what the report card and the
cascade compare. Same examples, order, batches and normalisation as the stage's own test."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def evaluating(model: nn.Module, device: torch.device | None = None) -> Iterator[torch.device]:
    """`model` on `device` (default: the inference device), in eval mode, under inference mode, with the global random state
    untouched (a loader draws a seed: a run that scores or tests in between shuffles like one that does
    not); its mode and device are restored afterwards. Every inference pass of kdcl runs inside it."""
    device = device or inference_device()
    home, was_training = next(model.parameters()).device, model.training
    model.to(device).eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            yield device
    finally:
        model.train(was_training).to(home)


def predict(model: nn.Module, loader: DataLoader, to_input, seen: list[int] | None = None, limit=None,
            device: torch.device | None = None) -> Predictions:  # fmt: skip
    """`model`'s logits on `loader`'s batches (x, y, ...), made its input by `to_input` (the data's `scale`), classes not in
    `seen` masked out as the stage's own predictions are (kdcl.training.module.DistillationModule.predict_seen).
    kdcl's one inference loop: report cards, the cascade, curriculum scores and stored teacher outputs."""
    logits, labels = [], []
    with evaluating(model, device) as device:
        for i, (x, y, *_) in enumerate(loader):
            if i >= batch_limit(limit, len(loader)):
                break
            logits.append(mask_unseen(model(to_input(x.to(device))).float(), seen).cpu())
            labels.append(torch.as_tensor(y).long())
    if not logits:
        return Predictions(torch.empty(0, 0), torch.empty(0, dtype=torch.long))
    # normal tensors again (not inference tensors): a loss may save them for backward
    return Predictions(torch.cat(logits).clone(), torch.cat(labels).clone())


def dataset_logits(model: nn.Module, dataset, to_input, batch_size: int = 256,
                   device: torch.device | None = None, workers: int = 0) -> torch.Tensor:  # fmt: skip
    """`model`'s logits (float32, CPU) of every example of `dataset`, in order (on `device`, default the
    inference device), read by `workers` loader processes (data.num_workers: a folder's decoding overlaps
    the model)."""
    return predict(model, DataLoader(dataset, batch_size, num_workers=workers), to_input, device=device).logits

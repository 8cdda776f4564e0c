"""Difficulty scores: one number per training example, aligned with the stage's training set, lower = easier.

Teacher scorers read the logits of one pass of a teacher over the (un-augmented) training images;
`student_loss` uses the student being trained (self-paced, re-scored during the stage); `class_order`,
`random` and `file` need no model. Adding a scorer = one function in SCORERS (logits, labels) -> scores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from kdcl.common.errors import KdclError
from kdcl.data.datamodule import dataset_labels

log = logging.getLogger("kdcl")


def confidence_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 − the model's probability of the true class."""
    return 1 - F.softmax(logits, 1).gather(1, labels[:, None]).squeeze(1)


def margin_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(best wrong-class probability) − (true-class probability): negative when right, positive when wrong."""
    p = F.softmax(logits, 1)
    true = p.gather(1, labels[:, None]).squeeze(1)
    other = p.scatter(1, labels[:, None], -1.0).max(1).values
    return other - true


def entropy_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # noqa: ARG001 — label-free
    """Entropy of the model's prediction: how unsure it is, right or wrong."""
    return -(F.softmax(logits, 1) * F.log_softmax(logits, 1)).sum(1)


def loss_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each example."""
    return F.cross_entropy(logits, labels, reduction="none")


# scorers that read a model's logits; the model is the teacher unless the name says student
SCORERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "teacher_confidence": confidence_scores,
    "teacher_margin": margin_scores,
    "teacher_entropy": entropy_scores,
    "teacher_loss": loss_scores,
    "student_loss": loss_scores,
}
MODEL_FREE = ("class_order", "random", "file")
ALL_SCORERS = (*SCORERS, *MODEL_FREE)


def held_out_folds(n: int, k: int, seed: int) -> list[torch.Tensor]:
    """A seeded split of n examples into k folds: the positions each out-of-fold model scores."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [perm[fold::k].sort().values for fold in range(k)]


def labels_of(dataset: Dataset) -> torch.Tensor:
    return dataset_labels(dataset)


def class_order_scores(labels: torch.Tensor, order: list[int] | None, seed: int) -> torch.Tensor:
    """Whole classes in the given order (a task-level curriculum); random order within a class."""
    classes = sorted(set(labels.tolist()))
    order = list(order) if order else classes
    missing = [c for c in classes if c not in order]
    if missing:
        raise KdclError(f"curriculum.class_order={order} leaves out classes {missing}; list every class once")
    rank = {c: i for i, c in enumerate(order)}
    jitter = torch.rand(len(labels), generator=torch.Generator().manual_seed(seed))
    return torch.tensor([float(rank[int(c)]) for c in labels]) + jitter * 0.5


def random_scores(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed))


def file_scores(path: str, n: int) -> torch.Tensor:
    """Scores a user computed: .pt/.pth (a tensor, or a stage's scores.pt from another run on the same
    examples), .npy, or text (one number per line), length n."""
    p = Path(path)
    if not p.is_file():
        raise KdclError(
            f"curriculum.scores_file '{path}' does not exist; give a file with one score per training example"
        )
    try:
        if p.suffix in (".pt", ".pth"):
            loaded = torch.load(p, weights_only=True)
            if isinstance(loaded, dict) and "scores" in loaded:  # another run's scores.pt: reuse its scores
                loaded = loaded["scores"]
            scores = torch.as_tensor(loaded, dtype=torch.float32)
        elif p.suffix == ".npy":
            import numpy as np

            scores = torch.as_tensor(np.load(p, allow_pickle=False), dtype=torch.float32)
        else:
            scores = torch.tensor([float(v) for v in p.read_text().split()])
    except Exception as exc:
        raise KdclError(f"curriculum.scores_file '{path}' is not readable as scores ({str(exc)[:120]})") from None
    scores = scores.flatten()
    if len(scores) != n:
        raise KdclError(
            f"curriculum.scores_file '{path}' has {len(scores)} scores but the stage trains on {n} examples; "
            "give one score per training example, in dataset order"
        )
    return scores


def degenerate(scores: torch.Tensor) -> str | None:
    """Why the scores cannot order the data (or None): all equal, or nearly all at the easy end."""
    lo, hi = scores.min(), scores.max()
    if hi - lo < 1e-8:
        return "all scores are equal"
    share = ((scores - lo) / (hi - lo) < 0.01).float().mean().item()
    if share >= 0.9:
        return f"{share:.0%} of the examples share the easiest 1 % of the score range"
    return None


def warn_if_degenerate(scores: torch.Tensor, scorer: str, source: str) -> None:
    why = degenerate(scores)
    if why:
        hint = " (a teacher scoring examples it trained on remembers them: try curriculum.source=folds or early)"
        log.warning(f"curriculum: {scorer} scores from the {source} teacher are degenerate: {why}"
                    f"{hint if source == 'final' and scorer.startswith('teacher') else ''}")  # fmt: skip

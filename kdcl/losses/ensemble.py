"""Several teachers as one: their logits combined into the logits of one ensemble target, per example.

`mean`: the mean of the teachers' probabilities (the ensemble's usual predictive distribution);
`confidence`: a mean weighted per example by each teacher's confidence (its top probability),
normalised over the teachers, so a teacher that is sure of an example counts more there. The result
is returned as log-probabilities: a logit vector whose softmax is the ensemble's distribution, so
every logit term (kd at temperature T, dkd, ...) treats the ensemble like one teacher.
"""

from __future__ import annotations

import torch

COMBINATIONS = ("none", "mean", "confidence")  # none: each teacher is its own target (losses averaged)


def ensemble_logits(teacher_logits: list[torch.Tensor], how: str) -> torch.Tensor:
    """The ensemble target of a list of (N, C) teacher logits as (N, C) log-probabilities."""
    probs = torch.stack([t.detach().float().softmax(-1) for t in teacher_logits])  # (K, N, C)
    if how == "mean":
        weights = torch.full(probs.shape[:2], 1.0 / len(teacher_logits), device=probs.device)
    elif how == "confidence":
        confidence = probs.max(-1).values  # (K, N)
        weights = confidence / confidence.sum(0, keepdim=True)
    else:
        raise ValueError(f"unknown teacher combination {how!r}; use one of {', '.join(COMBINATIONS[1:])}")
    mixed = (weights[..., None] * probs).sum(0)
    return mixed.clamp_min(torch.finfo(mixed.dtype).tiny).log()

"""The teacher–student cascade: the student answers when its confidence reaches τ, otherwise the image
goes to the teacher. Pure functions of the two models' predictions on one split.

Expected latency per image: the student runs on every image, the teacher on the deferred share too:
latency(τ) = student + deferred(τ) × teacher. The operating point is the cheapest τ whose accuracy on
the validation split stays within `max_drop` of the teacher's; it is then reported on the test split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from kdcl.models.predictions import Predictions


@dataclass(frozen=True)
class Point:
    tau: float
    deferred: float  # share of images the teacher answers
    accuracy: float
    latency_ms: float  # expected per image
    macs: float | None = None  # expected multiply-accumulates per image, where both models' are known

    def to_json(self) -> dict:
        return asdict(self)


def confidence(p: Predictions, kind: str) -> torch.Tensor:
    """max_prob: the top softmax probability; margin: the top probability minus the second."""
    probs = p.probs
    if kind == "margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[:, 0] - top2[:, 1]
    return probs.max(-1).values


def thresholds(steps: int) -> list[float]:
    """0, 1/steps, ..., 1, and one value above 1, where every image goes to the teacher."""
    return [i / steps for i in range(steps + 1)] + [1.0 + 1.0 / steps]


def answers(student: torch.Tensor, teacher: torch.Tensor, conf: torch.Tensor, tau: float) -> torch.Tensor:
    """The cascade's predicted classes: the student's where conf ≥ τ, else the teacher's."""
    return torch.where(conf >= tau, student, teacher)


def curve(student: Predictions, teacher: Predictions, kind: str, taus: list[float],
          latency_ms: tuple[float, float], macs: tuple[int, int] | None = None) -> list[Point]:  # fmt: skip
    """One point per τ; `latency_ms` and `macs`: (student, teacher) per image."""
    conf, s, t, y = confidence(student, kind), student.predicted, teacher.predicted, student.labels
    points = []
    for tau in taus:
        deferred = float((conf < tau).float().mean())
        accuracy = float((answers(s, t, conf, tau) == y).float().mean())
        cost = macs[0] + deferred * macs[1] if macs else None
        points.append(Point(tau, deferred, accuracy, latency_ms[0] + deferred * latency_ms[1], cost))
    return points


def operating_point(val_curve: list[Point], teacher_acc: float, max_drop: float) -> Point:
    """The cheapest τ (least expected latency, then least deferred, then smallest τ) whose validation
    accuracy is at least the teacher's minus `max_drop`; τ above 1 (the teacher alone) always qualifies."""
    good = [p for p in val_curve if p.accuracy >= teacher_acc - max_drop - 1e-12]
    return min(good, key=lambda p: (p.latency_ms, p.deferred, p.tau))

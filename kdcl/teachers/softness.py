"""How soft a teacher's targets are: the mean entropy of its softened outputs, and the temperature at which
one teacher is as soft as others are (pipeline=anchors, order=matched: is the anchors' effect only softer
targets?)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch.distributions import Categorical

from kdcl.common.errors import StageFailed

SEARCH = (1e-2, 1e3)  # the temperatures searched: far sharper and far softer than any KD setting


def mean_entropy(logits: torch.Tensor, temperature: float) -> float:
    """Mean over examples of the entropy (nats) of softmax(logits / temperature), in float64."""
    return float(Categorical(logits=logits.double() / temperature).entropy().mean())


def matching_temperature(logits: torch.Tensor, target: float, what: str) -> float:
    """The temperature T at which mean_entropy(logits, T) = target. Each example's entropy rises with T (from
    its argmax's at T→0 to log C at T→∞), so the root is unique; scipy's brentq finds it in log T."""
    from scipy.optimize import brentq  # here: only this control needs it, and importing it slows every start-up

    gap = lambda log_t: mean_entropy(logits, math.exp(log_t)) - target  # noqa: E731
    low, high = (math.log(t) for t in SEARCH)
    if gap(low) > 0 or gap(high) < 0:
        raise StageFailed(f"{what}: no temperature in {SEARCH[0]}..{SEARCH[1]:g} gives the teacher the mean entropy "
                        f"{target:.4g} nats; resume with another distill.temperature (the anchors' entropies are taken at "
                          f"it) or start a run with other anchors (pipeline.anchors, pipeline.epochs)")  # fmt: skip
    return math.exp(brentq(gap, low, high, xtol=1e-12, rtol=1e-12))


@dataclass(frozen=True)
class MatchedTemperature:
    """The matched temperature and the entropies it was found from (recorded in the stage's metrics)."""

    temperature: float  # the stage's KD temperature: the teacher's mean entropy equals `target_entropy`
    configured: float  # the temperature the references are measured at (the stage's terms')
    target_entropy: float  # mean over the references of their mean entropy at `configured`
    references: dict[str, float]  # reference (`teacher@E`) -> its mean entropy at `configured`
    teacher: str
    teacher_entropy: float  # the teacher's mean entropy at `configured`, before matching

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, teacher: str, logits: torch.Tensor, references: dict[str, torch.Tensor], configured: float,
           what: str) -> MatchedTemperature:  # fmt: skip
        """From the teacher's and each reference's logits on the same examples."""
        entropies = {ref: mean_entropy(ref_logits, configured) for ref, ref_logits in references.items()}
        target = sum(entropies.values()) / len(entropies)
        return cls(matching_temperature(logits, target, what), configured, target, entropies, teacher,
                   mean_entropy(logits, configured))  # fmt: skip

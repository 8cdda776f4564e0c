"""Named, weighted loss terms built from the `distill.terms` config.

A term is a function `(inputs, **params) -> scalar tensor`; adding one = one `@register_term` function
(plus a conf/distill/*.yaml preset that uses it). The total loss is Σ weight·term.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from kdcl.errors import KdclError, did_you_mean
from kdcl.losses import functional as LF


@dataclass
class TermInputs:
    student_logits: torch.Tensor
    teacher_logits: list[torch.Tensor]  # one entry per teacher of the stage (may be empty)
    target: torch.Tensor


TermFn = Callable[..., torch.Tensor]
TERMS: dict[str, TermFn] = {}
NEEDS_TEACHER: set[str] = set()


def register_term(name: str, needs_teacher: bool = True) -> Callable[[TermFn], TermFn]:
    def add(fn: TermFn) -> TermFn:
        TERMS[name] = fn
        if needs_teacher:
            NEEDS_TEACHER.add(name)
        return fn

    return add


def mean_over_teachers(fn: Callable[[torch.Tensor], torch.Tensor], teachers: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([fn(t) for t in teachers]).mean()


@register_term("ce", needs_teacher=False)
def ce(inp: TermInputs, label_smoothing: float = 0.0) -> torch.Tensor:
    return LF.ce_loss(inp.student_logits, inp.target, label_smoothing)


@register_term("kd")
def kd(inp: TermInputs, temperature: float = 4.0) -> torch.Tensor:
    return mean_over_teachers(lambda t: LF.kd_loss(inp.student_logits, t, temperature), inp.teacher_logits)


@dataclass
class Term:
    name: str  # the key in distill.terms (shown in logs)
    kind: str  # the registered function (defaults to the name)
    weight: float
    params: dict


def parse_terms(terms_cfg: Mapping, key: str = "distill.terms") -> list[Term]:
    """Validate the terms config: known kinds, known parameters, weights ≥ 0, temperatures > 0."""
    if not terms_cfg:
        raise KdclError(f"{key} is empty; give at least one term, e.g. {key}.ce.weight=1")
    terms = []
    for name, spec in terms_cfg.items():
        spec = dict(spec or {})
        kind = spec.pop("kind", name)
        if kind not in TERMS:
            raise KdclError(
                f"{key}.{name}: '{kind}' is not a loss term{did_you_mean(kind, TERMS)}; known: {', '.join(sorted(TERMS))}"
            )
        weight = spec.pop("weight", 1.0)
        if not isinstance(weight, (int, float)) or weight < 0:
            raise KdclError(f"{key}.{name}.weight={weight} must be a number ≥ 0")
        allowed = [p for p in inspect.signature(TERMS[kind]).parameters if p != "inp"]
        for param, value in spec.items():
            if param not in allowed:
                raise KdclError(
                    f"{key}.{name}.{param} is not a parameter of the '{kind}' term{did_you_mean(param, allowed)}; "
                    f"it takes: {', '.join(allowed) or 'nothing'}"
                )
            if param == "temperature" and (not isinstance(value, (int, float)) or value <= 0):
                raise KdclError(f"{key}.{name}.temperature={value} must be > 0 (e.g. 4)")
        if kind == "ce" and not 0 <= spec.get("label_smoothing", 0.0) < 1:
            raise KdclError(f"{key}.{name}.label_smoothing={spec['label_smoothing']} must be in [0, 1)")
        terms.append(Term(str(name), kind, float(weight), spec))
    if not any(t.weight > 0 for t in terms):
        raise KdclError(f"{key}: every weight is 0; give at least one term a positive weight")
    return terms


class DistillLoss(nn.Module):
    """Σ weight·term over the configured terms; returns the total and each term's value for logging."""

    def __init__(self, terms_cfg: Mapping, key: str = "distill.terms"):
        super().__init__()
        self.terms = parse_terms(terms_cfg, key)

    @property
    def needs_teacher(self) -> bool:
        return any(t.kind in NEEDS_TEACHER and t.weight > 0 for t in self.terms)

    def forward(self, inp: TermInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {t.name: TERMS[t.kind](inp, **t.params) for t in self.terms if t.weight > 0}
        total = sum(next(t.weight for t in self.terms if t.name == name) * v for name, v in parts.items())
        return total, parts

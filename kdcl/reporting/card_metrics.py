"""The report card's scalar metrics, one line each in CARD_METRICS: the card's fields (card.json), its
columns (terminal, summary.md), summary.json's stage rows and the trackers' metrics all come from that
table. To add a metric: one function of Predictions below, one CardMetric line in the table.

- fidelity (Stanton et al. 2021; big_vision's distillation evals): top-1 agreement with the reference
  and the mean KL(reference ‖ model) of their softmax outputs (temperature 1);
- calibration: expected calibration error (torchmetrics' CalibrationError, 15 equal-width bins, L1)
  and the negative log-likelihood.

What is not one number of one model's predictions (per-class accuracy, the largest gaps, the reliability
bins, the last checkpoint's accuracy) stays in kdcl/reporting/card.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from kdcl.models.predictions import Predictions

BINS = 15  # calibration bins (torchmetrics' default)


def agreement(reference: Predictions, model: Predictions) -> float:
    """Share of test images on which the two models predict the same class."""
    return float((reference.predicted == model.predicted).float().mean())


def mean_kl(reference: Predictions, model: Predictions) -> float:
    """Mean over images of KL(p_reference ‖ p_model) in nats."""
    log_ref, log_model = reference.logits.log_softmax(-1), model.logits.log_softmax(-1)
    return float(F.kl_div(log_model, log_ref, log_target=True, reduction="batchmean").clamp_min(0))


def expected_calibration_error(p: Predictions, bins: int = BINS) -> float:
    return float(multiclass_calibration_error(p.probs, p.labels, p.logits.shape[-1], n_bins=bins, norm="l1"))


def nll(p: Predictions) -> float:
    return float(F.cross_entropy(p.logits, p.labels))


def missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def percent(value: float | None) -> str:
    return "-" if missing(value) else f"{100 * value:.2f}"


def decimals(value: float | None) -> str:
    return "-" if missing(value) else f"{value:.4f}"


@dataclass(frozen=True)
class CardMetric:
    key: str  # its key in card.json, in summary.json's stage rows, and `<stage>/test/<key>` in the trackers
    header: str  # its column in the terminal and summary.md tables
    compute: Callable[[Predictions, Predictions], float]  # (model, reference)
    show: Callable[[float | None], str]  # a table cell; None (no value) and NaN must show as "-"
    note: str = ""  # what it is, in summary.md's line under the table
    needs_reference: bool = False  # None when the model was tested on other examples (class-incremental)
    in_summary: bool = True  # copied into summary.json's stage rows and published to the trackers


# the card's columns in this order; card.json keys, summary rows and tracker metrics follow it too
CARD_METRICS: tuple[CardMetric, ...] = (
    CardMetric("agreement", "agreement %", lambda m, r: agreement(r, m), percent,
               "Agreement: same top-1 class as the reference", needs_reference=True),
    CardMetric("kl", "KL (nats)", lambda m, r: mean_kl(r, m), decimals, "KL(reference ‖ model), nats per image",
               needs_reference=True),
    CardMetric("ece", "ECE %", lambda m, r: expected_calibration_error(m), percent, f"ECE: {BINS} bins"),
    CardMetric("nll", "NLL", lambda m, r: nll(m), decimals),
)  # fmt: skip


# what the other places read: at call time, so that they follow the table whatever it holds -----------
def compute_all(model: Predictions, reference: Predictions, comparable: bool) -> dict[str, float | None]:
    """{key: value} of every metric; `comparable`: the model was tested on the reference's examples."""
    return {m.key: m.compute(model, reference) if comparable or not m.needs_reference else None for m in CARD_METRICS}


def headers() -> list[str]:
    return [m.header for m in CARD_METRICS]


def cells(card: dict) -> list[str]:
    """The metrics' cells of a card (card.json's form); a card written before a metric existed shows "-"."""
    return [m.show(card.get(m.key)) for m in CARD_METRICS]


def notes() -> str:
    return "; ".join(m.note for m in CARD_METRICS if m.note)


def summary_keys() -> tuple[str, ...]:
    """The metrics copied into summary.json's stage rows and published to the trackers."""
    return tuple(m.key for m in CARD_METRICS if m.in_summary)

"""The report card of a stage's model on the test set, against the run's first model (the reference):

- the scalar metrics of kdcl/reporting/card_metrics.py's table (fidelity: agreement, KL; calibration:
  ECE, NLL), one field and one column each;
- the bins of a reliability diagram;
- per-class accuracy of the model and the reference, and the classes where the model falls furthest
  behind;
- test accuracy of the chosen (best-validation) checkpoint and of the last epoch's.

Pure functions of Predictions; kdcl/run/cards.py feeds them a run's checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from kdcl.common.plots import saved_figure
from kdcl.models.predictions import Predictions
from kdcl.reporting import card_metrics
from kdcl.reporting.card_metrics import BINS, percent

GAPS = 3  # classes listed where the model trails the reference most


@dataclass(frozen=True)
class Card:
    stage: str
    model: str
    examples: int
    test_acc: float  # the chosen checkpoint's
    test_acc_last: float  # the last epoch's checkpoint's
    metrics: dict[str, float | None]  # card_metrics.CARD_METRICS' {key: value}; None: no value (see needs_reference)
    per_class: list[float]  # NaN for a class without test examples
    reference_per_class: list[float] | None
    largest_gaps: list[dict]  # [{class, acc, reference_acc}], the model's largest shortfalls first
    reliability: list[dict]  # per non-empty bin: {low, high, confidence, accuracy, count}

    def to_json(self) -> dict:
        """The fields, with the metrics as keys of their own (card.json and summary.json read them so); NaN → null."""
        flat: dict = {}
        for f in fields(self):
            value = getattr(self, f.name)
            flat.update(value if f.name == "metrics" else {f.name: value})
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in flat.items()}


def same_examples(a: Predictions, b: Predictions) -> bool:
    return a.labels.shape == b.labels.shape and bool((a.labels == b.labels).all())


def reliability(p: Predictions, bins: int = BINS) -> list[dict]:
    """The reliability diagram's bins, as torchmetrics bins them for the ECE (it does not return them);
    a confidence of exactly 1 joins the top bin."""
    confidence, predicted = p.probs.max(-1)
    correct = (predicted == p.labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(max=bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        if members.any():
            rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(members.sum()),
                         "confidence": float(confidence[members].mean()), "accuracy": float(correct[members].mean())})  # fmt: skip
    return rows


def per_class_accuracy(p: Predictions, num_classes: int) -> list[float]:
    """Accuracy on each class's test images (NaN where a class has none: torchmetrics would say 0)."""
    total = torch.bincount(p.labels, minlength=num_classes).float()
    correct = torch.bincount(p.labels[p.predicted == p.labels], minlength=num_classes).float()
    return (correct / total).tolist()  # 0/0 is NaN


def largest_gaps(model: list[float], reference: list[float], n: int = GAPS) -> list[dict]:
    """The classes where the model trails the reference most (none where it trails nowhere)."""
    pairs = enumerate(zip(model, reference, strict=True))
    gaps = [(r - m, c) for c, (m, r) in pairs if not (math.isnan(m) or math.isnan(r)) and r > m]
    return [{"class": c, "acc": model[c], "reference_acc": reference[c]} for _, c in sorted(gaps, reverse=True)[:n]]


def build_card(stage: str, model: str, chosen: Predictions, last: Predictions, reference: Predictions) -> Card:
    num_classes = chosen.logits.shape[-1]
    comparable = same_examples(chosen, reference)
    mine = per_class_accuracy(chosen, num_classes)
    theirs = per_class_accuracy(reference, num_classes) if comparable else None
    return Card(
        stage=stage, model=model, examples=len(chosen.labels), test_acc=chosen.accuracy, test_acc_last=last.accuracy,
        metrics=card_metrics.compute_all(chosen, reference, comparable),
        per_class=mine, reference_per_class=theirs, largest_gaps=largest_gaps(mine, theirs) if theirs else [],
        reliability=reliability(chosen),
    )  # fmt: skip


# rendering -----------------------------------------------------------------------------------------
def card_headers() -> list[str]:
    return ["stage", "test acc % (chosen)", "test acc % (last)", *card_metrics.headers(),
            "largest per-class gaps (class: model / reference %)"]  # fmt: skip


def card_row(card: dict) -> list[str]:
    gaps = ", ".join(
        f"{g['class']}: {100 * g['acc']:.1f} / {100 * g['reference_acc']:.1f}" for g in card["largest_gaps"]
    )
    return [card["stage"], percent(card["test_acc"]), percent(card["test_acc_last"]), *card_metrics.cells(card),
            gaps or "-"]  # fmt: skip


def reliability_plot(cards: list[dict], path: Path) -> None:
    """Accuracy against confidence per bin, one line per stage; the diagonal is perfect calibration."""
    with saved_figure(path, size=(5, 4.5)) as ax:
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
        for card in cards:
            bins = card["reliability"]
            label = f"{card['stage']} (ECE {100 * card['ece']:.1f} %)"
            ax.plot(
                [b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", markersize=3, label=label
            )
        ax.set(xlabel="confidence (max probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02),
               title="reliability on the test set")  # fmt: skip
        ax.legend(fontsize=8, loc="upper left")

"""Report card metrics and the cascade on hand-made predictions, against independent computations."""

import math

import numpy as np
import pytest
import torch

from kdcl.deploy.cascade import answers, confidence, curve, operating_point, thresholds
from kdcl.models.predictions import Predictions
from kdcl.reporting import card_metrics
from kdcl.reporting.card import build_card, card_headers, card_row, per_class_accuracy
from kdcl.reporting.card_metrics import (
    CardMetric,
    agreement,
    decimals,
    expected_calibration_error,
    mean_kl,
    nll,
    percent,
)
from kdcl.reporting.summary import card_section, with_cards
from kdcl.reporting.trackers import card_metrics as tracker_metrics


def from_probs(probs, labels) -> Predictions:
    return Predictions(torch.tensor(probs, dtype=torch.float32).log(), torch.tensor(labels))


# 8 images, 3 classes; top probabilities 0.9, 0.81, 0.71, 0.61, 0.52, 0.45, 0.95, 0.41: none on a bin edge
# (k/15); predicted 0 1 2 0 1 0 2 2, so right, right, wrong, wrong, right, right, right, wrong
PROBS = [[0.9, 0.05, 0.05], [0.1, 0.81, 0.09], [0.2, 0.09, 0.71], [0.61, 0.3, 0.09],
         [0.24, 0.52, 0.24], [0.45, 0.35, 0.2], [0.02, 0.03, 0.95], [0.3, 0.29, 0.41]]  # fmt: skip
LABELS = [0, 1, 0, 1, 1, 0, 2, 1]
PERFECT = [[0.8 if c == y else 0.1 for c in range(3)] for y in LABELS]  # a teacher right on every image


def ece_by_hand(probs, labels, bins=15) -> float:
    """Equal-width bins over the top probability: Σ_b |B|/N · |accuracy(B) − confidence(B)|."""
    p = np.asarray(probs)
    conf, pred = p.max(1), p.argmax(1)
    correct = pred == np.asarray(labels)
    total = 0.0
    for b in range(bins):
        inside = (conf > b / bins) & (conf <= (b + 1) / bins)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return total


def test_ece_and_nll_match_an_independent_computation():
    p = from_probs(PROBS, LABELS)
    assert expected_calibration_error(p) == pytest.approx(ece_by_hand(PROBS, LABELS), abs=1e-6)
    assert ece_by_hand(PROBS, LABELS) > 0.1  # a badly calibrated toy: the check is not of zero against zero
    assert nll(p) == pytest.approx(-np.mean(np.log([PROBS[i][y] for i, y in enumerate(LABELS)])), rel=1e-5)


def test_agreement_kl_and_per_class_accuracy():
    student = from_probs(PROBS, LABELS)
    teacher_probs = [[0.7, 0.2, 0.1]] * 4 + [[0.1, 0.8, 0.1]] * 4
    teacher = from_probs(teacher_probs, LABELS)
    agree = np.mean(np.argmax(PROBS, 1) == np.argmax(teacher_probs, 1))
    kl = np.mean([sum(t * math.log(t / s) for t, s in zip(tp, sp, strict=True))
                  for tp, sp in zip(teacher_probs, PROBS, strict=True)])  # fmt: skip
    assert agreement(teacher, student) == pytest.approx(agree)
    assert mean_kl(teacher, student) == pytest.approx(kl, rel=1e-5)
    assert agreement(student, student) == 1.0 and mean_kl(student, student) == pytest.approx(0.0, abs=1e-7)
    assert per_class_accuracy(student, 4)[:3] == pytest.approx([2 / 3, 2 / 4, 1.0]) and math.isnan(
        per_class_accuracy(student, 4)[3]
    )  # class 3 has no test image
    card = build_card("student", "m", student, student, from_probs(PERFECT, LABELS))
    # against a perfect reference: class 1 trails by 1/2, class 0 by 1/3, class 2 not at all (not listed)
    assert [(g["class"], g["reference_acc"] - g["acc"]) for g in card.largest_gaps] == [
        (1, pytest.approx(0.5)),
        (0, pytest.approx(1 / 3)),
    ]


def test_a_metric_is_one_line_in_the_table(monkeypatch, tmp_path):
    """One CardMetric more and nothing else: the card, its table, summary.json's rows and the trackers show it."""

    def top(p: Predictions) -> float:
        return float(p.probs.max(-1).values.mean())

    mean_conf = CardMetric(
        "confidence", "mean conf. %", lambda m, r: top(m), percent, "mean confidence: the top probability"
    )
    gap = CardMetric(
        "conf_gap", "conf. gap", lambda m, r: top(r) - top(m), decimals, needs_reference=True, in_summary=False
    )
    monkeypatch.setattr(card_metrics, "CARD_METRICS", (*card_metrics.CARD_METRICS, mean_conf, gap))
    student, teacher = from_probs(PROBS, LABELS), from_probs(PERFECT, LABELS)
    mean_top = float(np.mean(np.max(PROBS, 1)))
    cards = [build_card("teacher", "t", teacher, teacher, teacher).to_json(),
             build_card("student", "s", student, student, teacher).to_json(),
             build_card("other", "s", from_probs(PROBS[:4], LABELS[:4]), student, teacher).to_json()]  # fmt: skip
    assert cards[1]["confidence"] == pytest.approx(mean_top) and cards[1]["conf_gap"] == pytest.approx(0.8 - mean_top)
    assert cards[2]["conf_gap"] is None and cards[2]["agreement"] is None  # tested on other examples
    headers, row = card_headers(), card_row(cards[1])
    assert headers[-3:-1] == ["mean conf. %", "conf. gap"] and len(row) == len(headers)
    assert row[-3:-1] == [f"{100 * mean_top:.2f}", f"{0.8 - mean_top:.4f}"] and card_row(cards[2])[-2] == "-"
    section = card_section(cards, tmp_path)
    assert "| mean conf. % | conf. gap |" in section and "; mean confidence: the top probability." in section
    stages = [{"name": c["stage"], "params": 1, "test_acc": c["test_acc"]} for c in cards]
    rows = with_cards(stages, cards)
    assert rows[1]["confidence"] == cards[1]["confidence"] and "conf_gap" not in rows[1]  # in_summary=False
    published = tracker_metrics({"stages": rows})
    assert published["student/test/confidence"] == pytest.approx(mean_top) and "student/test/conf_gap" not in published
    assert "other/test/agreement" not in published and published["other/test/nll"] > 0  # None is not published


def test_cascade_at_zero_is_the_student_and_above_one_the_teacher():
    student = from_probs(PROBS, LABELS)
    teacher = from_probs(PERFECT, LABELS)
    points = curve(student, teacher, "max_prob", thresholds(10), (1.0, 5.0))
    first, last = points[0], points[-1]
    assert first.tau == 0 and first.deferred == 0 and first.accuracy == student.accuracy and first.latency_ms == 1.0
    assert last.tau > 1 and last.deferred == 1 and last.accuracy == teacher.accuracy == 1.0 and last.latency_ms == 6.0
    conf = confidence(student, "max_prob")
    at_half = answers(student.predicted, teacher.predicted, conf, 0.5)
    assert at_half.tolist() == [0, 1, 2, 0, 1, 0, 2, 1]  # images 5 and 7 (below 0.5) get the teacher's answer
    margin = confidence(student, "margin")
    assert margin[0] == pytest.approx(0.85) and margin[7] == pytest.approx(0.11)


def test_operating_point_is_the_cheapest_tau_within_the_drop():
    student = from_probs(PROBS, LABELS)
    teacher = from_probs(PERFECT, LABELS)
    points = curve(student, teacher, "max_prob", thresholds(20), (1.0, 5.0))
    chosen = operating_point(points, teacher.accuracy, 0.0)
    assert chosen.accuracy == 1.0 and all(p.latency_ms >= chosen.latency_ms for p in points if p.accuracy == 1.0)
    loose = operating_point(points, teacher.accuracy, 1.0)
    assert loose.tau == 0 and loose.deferred == 0  # any accuracy is allowed: the student alone is cheapest

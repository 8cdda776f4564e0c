"""A teacher's softness (mean output entropy) and the temperature that matches it to others', against hand
computations on made-up logits."""

import math

import pytest
import torch

from kdcl.common.errors import StageFailed
from kdcl.teachers.softness import MatchedTemperature, matching_temperature, mean_entropy


def entropy(probs: list[float]) -> float:
    return -sum(p * math.log(p) for p in probs)


def test_mean_entropy_is_the_mean_over_examples_of_the_softened_distributions_entropy():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    assert mean_entropy(logits, 1.0) == pytest.approx((math.log(2) + entropy([0.75, 0.25])) / 2, rel=1e-12)
    p = math.sqrt(3) / (1 + math.sqrt(3))  # softmax([ln 3, 0] / 2)
    assert mean_entropy(logits, 2.0) == pytest.approx((math.log(2) + entropy([p, 1 - p])) / 2, rel=1e-12)


def test_the_matching_temperature_gives_the_target_entropy():
    logits = torch.randn(50, 10, generator=torch.Generator().manual_seed(0)) * 5
    assert matching_temperature(logits, mean_entropy(logits, 2.5), "here") == pytest.approx(2.5, rel=1e-8)
    assert matching_temperature(logits, mean_entropy(logits, 0.3), "here") == pytest.approx(0.3, rel=1e-8)


def test_matched_temperature_makes_the_teacher_as_soft_as_the_references_on_average():
    g = torch.Generator().manual_seed(1)
    teacher, early, later = (torch.randn(40, 10, generator=g) * s for s in (8.0, 1.0, 3.0))
    matched = MatchedTemperature.of("teacher", teacher, {"teacher@1": early, "teacher@2": later}, 4.0, "here")
    by_hand = (mean_entropy(early, 4.0) + mean_entropy(later, 4.0)) / 2
    assert matched.target_entropy == pytest.approx(by_hand, rel=1e-12)
    assert matched.references == {"teacher@1": mean_entropy(early, 4.0), "teacher@2": mean_entropy(later, 4.0)}
    assert mean_entropy(teacher, matched.temperature) == pytest.approx(by_hand, rel=1e-9)
    assert matched.temperature > 4.0  # the sharper teacher needs a higher temperature to be as soft
    assert matched.teacher_entropy == pytest.approx(mean_entropy(teacher, 4.0)) and matched.teacher_entropy < by_hand


def test_an_entropy_no_temperature_reaches_is_one_clear_error():
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(2))
    with pytest.raises(StageFailed) as err:
        matching_temperature(logits, math.log(10) + 0.1, "pipeline.stages.student.match_entropy")
    assert str(err.value).startswith("pipeline.stages.student.match_entropy: no temperature in 0.01..1000")
    assert "\n" not in str(err.value)
    # known only after the anchors trained: not bad input (2, "nothing started") but a failed stage
    assert err.value.exit_status == 6

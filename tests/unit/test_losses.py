import math

import pytest
import torch
import torch.nn.functional as F

from kdcl.common.errors import KdclError
from kdcl.losses import DistillLoss
from kdcl.losses.functional import ce_loss, kd_loss
from kdcl.losses.terms import TermInputs


def ref_kd(s, t, T):
    """Hinton KD by torch's own KL on probabilities (not kdcl's code path): T² · KL(p_t ‖ p_s), batch mean."""
    return F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T


def softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_kd_loss_matches_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    T = 2.0
    expected = 0.0
    for srow, trow in zip(s.tolist(), t.tolist(), strict=True):
        p_t = softmax([v / T for v in trow])
        p_s = softmax([v / T for v in srow])
        expected += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s, strict=True))
    expected = expected / 2 * T * T  # batch mean, T² scaling
    assert kd_loss(s, t, temperature=T).item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_is_zero_when_student_equals_teacher():
    x = torch.randn(8, 10)
    assert kd_loss(x, x.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_scales_with_temperature_squared():
    # For logits scaled with T, the softened distributions are identical, so only the T² factor differs.
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    base = kd_loss(s, t, 1.0)
    assert kd_loss(3 * s, 3 * t, 3.0).item() == pytest.approx(9 * base.item(), rel=1e-4)


def test_ce_loss_with_label_smoothing():
    logits = torch.tensor([[2.0, 0.0]])
    target = torch.tensor([0])
    p = softmax([2.0, 0.0])
    assert ce_loss(logits, target).item() == pytest.approx(-math.log(p[0]), rel=1e-6)
    smoothed = -(0.95 * math.log(p[0]) + 0.05 * math.log(p[1]))  # ε=0.1 spread over 2 classes
    assert ce_loss(logits, target, 0.1).item() == pytest.approx(smoothed, rel=1e-6)


def test_weighted_sum_of_terms_and_parts():
    s, t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    loss = DistillLoss({"ce": {"weight": 0.25}, "kd": {"weight": 0.75, "temperature": 3.0}})
    total, parts = loss(TermInputs(s, [t], y))
    assert set(parts) == {"ce", "kd"}
    expected = 0.25 * F.cross_entropy(s, y) + 0.75 * ref_kd(s, t, 3.0)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["kd"].item() == pytest.approx(ref_kd(s, t, 3.0).item(), rel=1e-5)
    assert loss.needs_teacher


def test_kd_averages_over_several_teachers():
    s, t1, t2, y = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5), torch.zeros(3, dtype=torch.long)
    total, _ = DistillLoss({"kd": {"weight": 1.0, "temperature": 2.0}})(TermInputs(s, [t1, t2], y))
    assert total.item() == pytest.approx(((ref_kd(s, t1, 2.0) + ref_kd(s, t2, 2.0)) / 2).item(), rel=1e-5)


def test_gradients_reach_the_student_only():
    student = torch.nn.Linear(3, 4)
    teacher = torch.nn.Linear(3, 4)  # trainable and outside no_grad: only the loss's detach keeps it out
    x, y = torch.randn(5, 3), torch.randint(0, 4, (5,))
    t = teacher(x)
    total, _ = DistillLoss({"ce": {"weight": 0.1}, "kd": {"weight": 0.9}})(TermInputs(student(x), [t], y))
    total.backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert teacher.weight.grad is None


@pytest.mark.parametrize(
    "terms, fragment",
    [
        ({"kd": {"weight": -1.0}}, "distill.terms.kd.weight=-1.0 must be a number ≥ 0"),
        ({"kd": {"temperature": -2.0}}, "distill.terms.kd.temperature=-2.0 must be a number > 0"),
        ({"kdd": {"weight": 1.0}}, "did you mean kd"),
        ({"kd": {"temprature": 4.0}}, "did you mean temperature"),
        ({}, "distill.terms is empty"),
    ],
)
def test_bad_terms_are_named(terms, fragment):
    with pytest.raises(KdclError, match=fragment.replace(".", r"\.").replace("?", r"\?")):
        DistillLoss(terms)

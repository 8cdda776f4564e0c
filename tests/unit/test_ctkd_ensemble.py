"""CTKD's learned temperature (reversed gradient, cosine easy-to-hard weight, bounds) and the ensemble
target of several teachers, against hand computations."""

from __future__ import annotations

import pytest
import torch

from kdcl.common.errors import KdclError
from kdcl.losses import DistillLoss
from kdcl.losses.ensemble import ensemble_logits
from kdcl.losses.functional import bounded_temperature, kd_loss
from kdcl.losses.terms import TermInputs

CTKD = {"ctkd": {"weight": 1.0, "t_min": 1.0, "t_max": 21.0, "reversal": 1.0,
                 "schedule": {"reversal": {"kind": "cosine", "start": 0.0, "until": 0.5}}}}  # fmt: skip


def test_mean_ensemble_target_is_the_mean_of_the_teachers_probabilities():
    a = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 3.0, 0.0], [1.0, -2.0, 0.5]])
    target = ensemble_logits([a, b], "mean").softmax(-1)
    by_hand = (a.softmax(-1) + b.softmax(-1)) / 2
    assert torch.allclose(target, by_hand, atol=1e-6)
    assert torch.allclose(ensemble_logits([a, b], "mean").exp().sum(-1), torch.ones(2))  # log-probabilities


def test_confidence_ensemble_weights_each_teacher_by_its_top_probability_per_example():
    a, b = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.5, 0.0]])
    pa, pb = a.softmax(-1), b.softmax(-1)
    wa, wb = pa.max(), pb.max()
    by_hand = (wa * pa + wb * pb) / (wa + wb)
    assert torch.allclose(ensemble_logits([a, b], "confidence").softmax(-1), by_hand, atol=1e-6)
    assert float(wa) > float(wb)  # the sure teacher counts more


def ctkd_setup(reversal_until: float = 0.5):
    torch.manual_seed(0)
    terms = {
        "ctkd": {**CTKD["ctkd"], "schedule": {"reversal": {"kind": "cosine", "start": 0.0, "until": reversal_until}}}
    }
    loss = DistillLoss(terms)
    student = torch.nn.Linear(8, 5)
    x, teacher = torch.randn(64, 8), torch.randn(64, 5) * 3
    return loss, student, x, teacher


def test_the_temperature_gradient_is_reversed_and_weighted_by_the_cosine_schedule():
    loss, student, x, teacher = ctkd_setup()
    logit = loss.temperature_logits["ctkd"]
    grads = {}
    for progress in (0.0, 0.25, 1.0):  # reversal weight 0, 0.5, 1
        logit.grad = None
        total, _ = loss(TermInputs(student(x), [teacher], torch.zeros(64, dtype=torch.long)), progress)
        total.backward()
        grads[progress] = float(logit.grad)
    # the plain gradient of the KD loss with respect to the same logit (no reversal)
    free = logit.detach().clone().requires_grad_(True)
    kd_loss(student(x).detach(), teacher, bounded_temperature(free, 1.0, 21.0)).backward()
    assert grads[0.0] == 0.0  # easy: the temperature does not move yet
    assert grads[1.0] == pytest.approx(-float(free.grad), rel=1e-5)  # hard: it ascends the KD loss
    assert grads[0.25] == pytest.approx(0.5 * grads[1.0], rel=1e-5)
    assert loss.scheduled_values(0.25)["reversal_ctkd"] == pytest.approx(0.5)


def test_the_learned_temperature_moves_and_stays_inside_its_bounds():
    loss, student, x, teacher = ctkd_setup(reversal_until=0.1)
    opt = torch.optim.AdamW([*student.parameters(), *loss.parameters()], lr=0.5)  # a large rate: push it hard
    seen = []
    for step in range(200):
        total, _ = loss(TermInputs(student(x), [teacher], torch.zeros(64, dtype=torch.long)), step / 200)
        opt.zero_grad()
        total.backward()
        opt.step()
        seen.append(loss.scheduled_values(step / 200)["temperature_ctkd"])
    assert seen[0] == pytest.approx(float(bounded_temperature(torch.tensor(1.0), 1.0, 21.0)), abs=0.5)
    assert max(seen) - min(seen) > 1.0  # it moved
    assert all(1.0 <= t <= 21.0 for t in seen)


def test_bad_ctkd_bounds_are_named():
    with pytest.raises(KdclError, match=r"ctkd.t_max=2.0 must be above t_min=4.0"):
        DistillLoss({"ctkd": {"t_min": 4.0, "t_max": 2.0}})
    with pytest.raises(KdclError, match=r"ctkd.t_min=0 must be a number > 0"):
        DistillLoss({"ctkd": {"t_min": 0}})
    with pytest.raises(KdclError, match="temperature_logit is not a parameter"):
        DistillLoss({"ctkd": {"temperature_logit": 1.0}})

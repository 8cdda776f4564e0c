"""Curriculum pieces: pacing formulas, scorers, the ordered step-level sampler, and its determinism."""

import math

import pytest
import torch

from kdcl.common.errors import KdclError
from kdcl.curriculum.pacing import fraction
from kdcl.curriculum.sampler import CurriculumBatchSampler, curriculum_order
from kdcl.curriculum.scoring import (
    class_order_scores,
    confidence_scores,
    degenerate,
    entropy_scores,
    file_scores,
    margin_scores,
)

T = 1000  # total steps; full_at 0.5 → all data from step 500


@pytest.mark.parametrize(
    "name, params, step, expected",
    [
        ("none", {}, 0, 1.0),
        ("linear", {}, 0, 0.2),
        ("linear", {}, 250, 0.2 + 0.8 * 0.5),
        ("linear", {}, 500, 1.0),
        ("linear", {}, 1000, 1.0),
        ("root", {"p": 2}, 0, 0.2),
        ("root", {"p": 2}, 250, math.sqrt(0.04 + 0.96 * 0.5)),
        ("root", {"p": 2}, 500, 1.0),
        ("root", {"p": 3}, 100, (0.008 + 0.992 * 0.2) ** (1 / 3)),
        ("geometric", {}, 0, 0.2),
        ("geometric", {}, 250, 0.2**0.5),
        ("geometric", {}, 500, 1.0),
        ("step", {"n_steps": 4}, 0, 0.2),
        ("step", {"n_steps": 4}, 124, 0.2),  # x = 0.248 → still the first step
        ("step", {"n_steps": 4}, 125, 0.2 + 0.8 * 0.25),
        ("step", {"n_steps": 4}, 300, 0.2 + 0.8 * 0.5),
        ("step", {"n_steps": 4}, 500, 1.0),
        ("exponential", {"inc": 2.0, "step_length": 100}, 0, 0.2),
        ("exponential", {"inc": 2.0, "step_length": 100}, 99, 0.2),
        ("exponential", {"inc": 2.0, "step_length": 100}, 100, 0.4),
        ("exponential", {"inc": 2.0, "step_length": 100}, 250, 0.8),
        ("exponential", {"inc": 2.0, "step_length": 100}, 300, 1.0),  # 1.6 clipped to 1
        ("exponential", {"inc": 2.0, "step_length": 100}, 1000, 1.0),
    ],
)
def test_pacing_formulas_at_chosen_points(name, params, step, expected):
    assert fraction(name, step, T, start=0.2, full_at=0.5, **params) == pytest.approx(expected)


@pytest.mark.parametrize(
    "name, params",
    [
        ("linear", {}),
        ("root", {"p": 2}),
        ("geometric", {}),
        ("step", {"n_steps": 3}),
        ("exponential", {"inc": 1.5, "step_length": 30}),
    ],  # fmt: skip
)
def test_pacing_is_monotone_and_within_start_and_one(name, params):
    values = [fraction(name, t, T, start=0.1, full_at=0.8, **params) for t in range(T + 1)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert values[0] == pytest.approx(0.1) and values[-1] == 1.0
    assert all(0.1 - 1e-12 <= v <= 1.0 for v in values)


def test_scorers_rank_by_hand_derived_difficulty():
    logits = torch.tensor([[4.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([0, 0, 0])  # confident right, unsure, confident wrong
    p = torch.softmax(logits, 1)
    assert torch.allclose(confidence_scores(logits, labels), 1 - p[:, 0])
    margins = margin_scores(logits, labels)
    assert margins[0] == pytest.approx((p[0, 1] - p[0, 0]).item())  # best wrong − true
    assert margins.argsort().tolist() == [0, 1, 2]
    e = entropy_scores(logits, labels)
    assert e[1] == pytest.approx(-(p[1] * p[1].log()).sum().item()) and e[1] > e[0]


def test_class_order_puts_whole_classes_in_the_given_order():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    scores = class_order_scores(labels, [2, 0, 1], seed=0)
    ranked = labels[scores.argsort()].tolist()
    assert ranked == [2, 2, 2, 0, 0, 1, 1]
    with pytest.raises(KdclError, match="leaves out classes \\[1\\]"):
        class_order_scores(labels, [2, 0], seed=0)


def test_scores_file_must_have_one_score_per_example(tmp_path):
    path = tmp_path / "scores.txt"
    path.write_text("0.1\n0.5\n0.2\n")
    assert file_scores(str(path), 3).tolist() == pytest.approx([0.1, 0.5, 0.2])
    with pytest.raises(KdclError, match="has 3 scores but the stage trains on 4 examples"):
        file_scores(str(path), 4)


def test_degenerate_scores_are_detected():
    assert degenerate(torch.zeros(10)) == "all scores are equal"
    memorised = torch.cat([torch.full((95,), 1e-4), torch.tensor([0.5, 0.6, 0.7, 0.8, 0.9])])
    assert "95% of the examples" in degenerate(memorised)
    assert degenerate(torch.linspace(0, 1, 100)) is None


N, B = 100, 10
SCORES = torch.rand(N, generator=torch.Generator().manual_seed(3))
LABELS = torch.arange(N) % 4


def make_sampler(order="easy_first", epochs=10, pacing=None, seed=0, balanced=False, **kw):
    pacing = pacing or {"name": "linear", "start": 0.2, "full_at": 0.5}
    return CurriculumBatchSampler(
        curriculum_order(SCORES, LABELS, order, balanced, seed), B, epochs, pacing, seed, **kw
    )


def stage_batches(sampler, epochs):
    out = []
    for e in range(epochs):
        sampler.set_epoch(e)
        sampler.clock_start = e * sampler.steps_per_epoch
        out.extend(list(sampler))
    return out


def test_first_batches_come_from_the_easiest_examples():
    sampler = make_sampler()
    easiest = set(SCORES.argsort()[: math.ceil(0.2 * N)].tolist())
    first = next(iter(sampler))
    assert len(first) == B and set(first) <= easiest
    # at every step the batch stays inside the easiest ceil(fraction·N)
    for step, batch in enumerate(stage_batches(make_sampler(), 10)):
        pool = set(SCORES.argsort()[: math.ceil(sampler.fraction_at(step) * N)].tolist())
        assert set(batch) <= pool, step


def test_every_example_is_drawn_over_a_stage():
    drawn = {i for batch in stage_batches(make_sampler(), 10) for i in batch}
    assert drawn == set(range(N))


def test_hard_first_starts_from_the_hardest_and_random_ignores_scores():
    hardest = set(SCORES.argsort(descending=True)[:20].tolist())
    assert set(next(iter(make_sampler("hard_first")))) <= hardest
    order = curriculum_order(SCORES, LABELS, "random", False, seed=0)
    assert sorted(order.tolist()) == list(range(N)) and order.tolist() != SCORES.argsort().tolist()
    assert torch.equal(order, curriculum_order(SCORES, LABELS, "random", False, seed=0))  # a fixed ordering
    assert not torch.equal(order, curriculum_order(SCORES, LABELS, "random", False, seed=1))


def test_balanced_order_keeps_every_class_in_each_prefix():
    order = curriculum_order(SCORES, LABELS, "easy_first", True, seed=0)
    first = LABELS[order[:20]]
    assert sorted(first.bincount().tolist()) == [5, 5, 5, 5]


def test_a_resumed_stage_draws_the_same_batches():
    full = stage_batches(make_sampler(seed=5), 10)
    resumed = make_sampler(seed=5)  # a new process: nothing carried over but the epoch and clock
    tail = []
    for e in range(4, 10):
        resumed.set_epoch(e)
        resumed.clock_start = e * resumed.steps_per_epoch
        tail.extend(list(resumed))
    assert tail == full[4 * resumed.steps_per_epoch :]
    assert stage_batches(make_sampler(seed=6), 10) != full


def test_ranks_draw_disjoint_parts_of_the_same_global_batch():
    ranks = [make_sampler() for _ in range(2)]
    for r, s in enumerate(ranks):
        s.set_distributed(r, 2)
    single = make_sampler(pacing=None)
    single.batch_size = 2 * B  # one process with the global batch
    single.set_distributed(0, 1)
    for step in (0, 3, 7):
        a, b = (s.batch_at(step, step) for s in ranks)
        assert len(a) == len(b) == B and a + b == single.batch_at(step, step)


def test_adaptive_advance_of_the_pacing_clock():
    from kdcl.curriculum.callback import advance_clock

    assert advance_clock("schedule", 40, 20, acc=0.1, best=0.9, threshold=0.9, jump=50) == 60
    assert advance_clock("on_plateau", 40, 20, acc=0.8, best=0.7, threshold=0.9, jump=50) == 60  # improved
    assert advance_clock("on_plateau", 40, 20, acc=0.7, best=0.7, threshold=0.9, jump=50) == 40  # held
    assert advance_clock("on_threshold", 40, 20, acc=0.95, best=0.0, threshold=0.9, jump=50) == 110
    assert advance_clock("on_threshold", 40, 20, acc=0.85, best=0.0, threshold=0.9, jump=50) == 60

"""The dry run's estimates (kdcl/run/estimate.py) follow what a stage does: a store found in the shared cache
costs no teacher pass and adds nothing to it, views cost K passes, retention keeps the optimizer state out
of a finished stage. The arithmetic against real runs is in docs/benchmarks.md."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kdcl.models.cost import StepTimes
from kdcl.run.estimate import Counts, StageWork, estimate

MB = 2**20
STUDENT = StepTimes(train_s=0.1, forward_s=0.03, eval_s=0.1, single_s=0.005, build_s=0.05, state_bytes=6 * MB,
                    param_bytes=6 * MB, modules=100)  # fmt: skip
TEACHER = StepTimes(train_s=0.3, forward_s=0.05, eval_s=0.2, single_s=0.005, build_s=0.1, state_bytes=44 * MB,
                    param_bytes=44 * MB, modules=60)  # fmt: skip
COUNTS = Counts(train=1280, val=256, test=512, batch=64, eval_batch=256, limits=(None, None, None))
DISTILL = StageWork(
    trains=True, epochs=10, counts=COUNTS, model=STUDENT, teachers=(TEACHER,), mode="cached", builds_store=True,
    fills_first=False, views=8, view_bytes=2 * MB, logit_bytes=4, classes=10, scoring=(), test_cached=False,
    in_summary=True, last_differs=True, latency=((1, 64), ("eager",)), first_export=False, optimizer="adamw", keep="weights",
    epoch_checkpoints=0, log_every=10,
)  # fmt: skip


def test_a_store_the_cache_has_costs_no_teacher_pass_and_no_cache_space():
    built, reused = estimate(DISTILL), estimate(replace(DISTILL, builds_store=False))
    assert built.seconds["teachers"] == pytest.approx(20 * TEACHER.forward_s)  # epoch 1's 20 batches
    assert reused.seconds["teachers"] == 0
    assert built.cache_bytes == 1280 * 10 * 4 + 1280 and reused.cache_bytes == 0
    assert reused.run_bytes == built.run_bytes  # the stage directory keeps its copy either way


def test_online_teachers_run_every_epoch_and_views_once_per_view():
    online = estimate(replace(DISTILL, mode="online"))
    views = estimate(replace(DISTILL, mode="views"))
    assert online.seconds["teachers"] == pytest.approx(10 * 20 * TEACHER.forward_s)
    assert views.seconds["teachers"] == pytest.approx(8 * 5 * TEACHER.eval_s)  # K passes of 5 eval batches
    assert views.cache_bytes == 2 * MB and views.run_bytes < estimate(DISTILL).run_bytes  # views live in the cache


def test_retention_keeps_weights_and_the_peak_counts_what_exact_resume_needs():
    weights, resumable = estimate(DISTILL), estimate(replace(DISTILL, keep="resumable"))
    assert resumable.run_bytes - weights.run_bytes == 2 * 2 * STUDENT.param_bytes  # AdamW's moments, two files
    assert weights.peak_bytes > resumable.run_bytes  # while training: both files resumable, one being written
    given = estimate(replace(DISTILL, trains=False, teachers=(), mode="online", test_cached=True))
    assert given.seconds["test"] == 0 and given.run_bytes < MB  # a given checkpoint writes no checkpoint

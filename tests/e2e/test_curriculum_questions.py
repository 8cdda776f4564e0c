"""Issue 16's pieces in one real run: noisy labels under a curriculum (the noisy-share scalar against a
hand count), CTKD's temperature in TensorBoard, and a student distilled from a two-teacher ensemble."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdcl.curriculum.pacing import fraction
from kdcl.curriculum.sampler import curriculum_order
from kdcl.data import KdclDataModule
from kdcl.data.datamodule import source_indices
from tests.conftest import TINY, in_process, run_dir_of, summary_of

RUN = [*TINY, "trainer=cpu", "pipeline=ensemble", "distill=ctkd", "data.label_noise=0.2", "curriculum=linear",
       "trainer.log_every_n_steps=1", "latency.batches=[]"]  # fmt: skip


@pytest.fixture(scope="module")
def noisy_ensemble_run(tmp_path_factory) -> Path:
    proc = in_process(["train", *RUN], tmp_path_factory.mktemp("issue16"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir_of(proc)


def scalars(run_dir: Path, stage: str, tag: str) -> list[float]:
    events = EventAccumulator(str(run_dir / "tensorboard" / stage), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def test_the_noisy_share_of_the_pool_equals_a_hand_count(noisy_ensemble_run):
    run_dir = noisy_ensemble_run
    record = json.loads((run_dir / "label_noise.json").read_text())
    assert record["flipped"] == round(0.2 * record["training_examples"]) and record["kind"] == "symmetric"
    # the student's examples (the whole training part), which of them are noisy, in the curriculum's order
    cfg = OmegaConf.load(run_dir / "config.yaml")
    data = KdclDataModule(cfg.data, seed=int(cfg.seed))
    data.setup()
    flipped = set(record["flipped_source_indices"])
    noisy = torch.tensor([i in flipped for i in source_indices(data.train_set)])
    saved = torch.load(run_dir / "stages" / "02-student" / "scores.pt", weights_only=True)
    order = curriculum_order(saved["scores"], saved["labels"], "easy_first", False, 0)
    events = EventAccumulator(str(run_dir / "tensorboard" / "02-student"), size_guidance={"scalars": 0})
    events.Reload()
    shares = events.Scalars("curriculum/noisy_share")
    total_steps = math.ceil(len(order) / int(cfg.data.batch_size)) * 2  # two epochs
    assert len(shares) > 3
    for event in shares:  # the pool at each logged step: the first ceil(fraction·N) of the order
        admitted = fraction("linear", event.step, total_steps, 0.2, 0.8)
        pool = order[: math.ceil(admitted * len(order))]
        assert event.value == pytest.approx(float(noisy[pool].float().mean()), abs=1e-6)
    shares = [e.value for e in shares]
    assert shares[-1] == pytest.approx(0.2, abs=0.01)  # all data admitted: the training part's noise rate
    assert shares[0] < shares[-1]  # easy first admits fewer noisy labels


def test_ctkd_temperature_moves_inside_its_bounds_in_tensorboard(noisy_ensemble_run):
    temps = scalars(noisy_ensemble_run, "02-student", "student/train/temperature_ctkd")
    reversal = scalars(noisy_ensemble_run, "02-student", "student/train/reversal_ctkd")
    assert all(1.0 <= t <= 21.0 for t in temps) and max(temps) - min(temps) > 1e-3
    assert reversal[0] < 0.5 and reversal[-1] == pytest.approx(1.0)  # cosine easy-to-hard weight


def test_the_report_shows_each_teacher_and_the_ensemble(noisy_ensemble_run):
    summary = summary_of(noisy_ensemble_run)
    assert [s["name"] for s in summary["stages"]] == ["teacher1", "teacher2", "student"]
    assert summary["stages"][2]["teachers"] == ["teacher1", "teacher2"]
    cards = {c["stage"]: c for c in summary["report_card"]}
    assert cards["student:ensemble"]["model"] == "mean of teacher1+teacher2"
    assert 0.0 < cards["student:ensemble"]["test_acc"] <= 1.0 and cards["student:ensemble"]["examples"] == 360
    assert "student:ensemble" in (noisy_ensemble_run / "summary.md").read_text()

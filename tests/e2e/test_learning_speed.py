"""A trained stage records its validation curve and learning speed (kdcl/reporting/speed.py) in metrics.json
and summary.json: checked on the shared tiny run against what it logged to TensorBoard, never for a value."""

from __future__ import annotations

import json
import statistics

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import summary_of


def logged_val_acc(run_dir, stage_dir: str, stage: str) -> list[float]:
    """The stage's validation accuracy per epoch as TensorBoard holds it."""
    values = []
    for events in (run_dir / "tensorboard" / stage_dir).glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if f"{stage}/val/acc" in acc.Tags()["scalars"]:
            values = [e.value for e in acc.Scalars(f"{stage}/val/acc")]
    return values


def test_each_trained_stage_records_its_validation_curve_and_learning_speed(tiny_run):
    for stage_dir, row in zip(("00-teacher", "01-student"), summary_of(tiny_run)["stages"], strict=True):
        curve = row["val_curve"]
        assert len(curve) == row["epochs"] == 3 and all(0.0 <= v <= 1.0 for v in curve), row
        assert curve == pytest.approx(logged_val_acc(tiny_run, stage_dir, row["name"]), abs=1e-6)
        assert row["best_val_acc"] == pytest.approx(max(curve), abs=1e-6)  # the checkpoint's monitor saw the same
        assert row["val_auc"] == pytest.approx(statistics.fmean(curve))
        # 25 % and 50 % of three epochs (0.75, 1.5) round down to epoch 1, at least the first; 100 %: epoch 3
        assert (row["val_acc_at_25"], row["val_acc_at_50"], row["val_acc_at_100"]) == (curve[0], curve[0], curve[2])
        metrics = json.loads((tiny_run / "stages" / stage_dir / "metrics.json").read_text())
        assert {
            k: metrics[k] for k in ("val_curve", "val_auc", "val_acc_at_25", "val_acc_at_50", "val_acc_at_100")
        } == {k: row[k] for k in ("val_curve", "val_auc", "val_acc_at_25", "val_acc_at_50", "val_acc_at_100")}

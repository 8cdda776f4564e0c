"""Every `distill` preset trains end to end on digits and logs each of its terms to TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdcl.confdir import config_dir
from tests.conftest import TINY, run_kdcl, summary_of

PRESETS = sorted(p.stem for p in (Path(config_dir()) / "distill").glob("*.yaml"))


def test_every_preset_trains_and_logs_each_term(tmp_path):
    assert {"kd", "dkd", "dist", "lskd", "fitnet", "at", "rkd", "none", "kd+at"} <= set(PRESETS)
    sweep = tmp_path / "sweep"
    fast = [
        "trainer.max_epochs=2",
        "pipeline.stages.teacher.epochs=1",
        "data.fraction=0.5",
        "report.latency_batches=[]",
    ]
    proc = run_kdcl(["train", "-m", *TINY, *fast, f"distill={','.join(PRESETS)}", f"hydra.sweep.dir={sweep}"],
                    tmp_path, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for job, preset in enumerate(PRESETS):
        job_dir = sweep / str(job)
        config = yaml.safe_load((job_dir / "config.yaml").read_text())
        assert config["distill"]["name"] == preset
        student = summary_of(job_dir)["stages"][1]
        assert student["teachers"] == ["teacher"]
        metrics = json.loads((job_dir / "stages" / "01-student" / "metrics.json").read_text())
        assert metrics["terms"] == config["distill"]["terms"]
        assert math.isfinite(student["test_loss"])
        events = EventAccumulator(str(job_dir / "tensorboard" / "01-student"))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        first, second = (e.value for e in events.Scalars("student/train/loss_epoch"))
        assert second < first, (preset, first, second)  # the student makes progress on its objective
        for term in config["distill"]["terms"]:
            values = [e.value for e in events.Scalars(f"student/train/loss_{term}_epoch")]
            assert values and all(math.isfinite(v) for v in values), (preset, term)
        for term, spec in config["distill"]["terms"].items():
            for param in spec.get("schedule", {}):
                assert f"student/train/{param}_{term}" in tags  # a schedule is visible as it moves
    report = run_kdcl(["report", str(sweep)], tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    lines = (sweep / "report.csv").read_text().splitlines()
    assert lines[0].startswith("settings,runs,seeds,teacher_acc_mean,teacher_acc_std,student_acc_mean")
    assert sorted(line.split(",")[0] for line in lines[1:]) == sorted(f"distill={p}" for p in PRESETS)
    assert (sweep / "report.png").read_bytes()[:4] == b"\x89PNG" and "distill=kd+at" in (
        sweep / "report.md"
    ).read_text()

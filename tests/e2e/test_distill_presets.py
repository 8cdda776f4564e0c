"""Every `distill` preset trains end to end on digits and logs each of its terms to TensorBoard.

One sweep (one process) trains every preset; each preset's job is then checked by its own test, so a
broken preset fails alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdcl.config.compose import config_dir
from tests.conftest import TINY, in_process, summary_of

PRESETS = sorted(p.stem for p in (Path(config_dir()) / "distill").glob("*.yaml"))


def test_the_presets_kdcl_documents_exist():
    documented = {"kd", "dkd", "dist", "lskd", "fitnet", "at", "rkd", "nst", "pkt", "sp", "kdsvd", "none", "kd+at"}
    assert documented <= set(PRESETS)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_run):
    """(the sweep's process, its directory): job N trains PRESETS[N], every job from tiny_run's teacher."""
    cwd = tmp_path_factory.mktemp("presets")
    fast = [
        "trainer.max_epochs=2",
        f"teacher.checkpoint={tiny_run / 'stages/00-teacher/checkpoints/best.ckpt'}",
        "data.fraction=0.3",
        "latency.batches=[]",
    ]
    proc = in_process(
        ["train", "-m", *TINY, *fast, f"distill={','.join(PRESETS)}", f"hydra.sweep.dir={cwd / 'sweep'}"], cwd
    )
    return proc, cwd / "sweep"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_and_logs_each_term(sweep, preset):
    proc, sweep_dir = sweep
    job_dir = sweep_dir / str(PRESETS.index(preset))
    assert (job_dir / "summary.json").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
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
    # the student makes progress on the labels: every preset has a ce term. (Not the total: CTKD's temperature
    # is trained to raise the KD term, and DKD's weight ramps up during epoch 1.)
    first, second = (e.value for e in events.Scalars("student/train/loss_ce_epoch"))
    assert second < first, (first, second)
    for term in config["distill"]["terms"]:
        values = [e.value for e in events.Scalars(f"student/train/loss_{term}_epoch")]
        assert values and all(math.isfinite(v) for v in values), term
    for term, spec in config["distill"]["terms"].items():
        for param in spec.get("schedule", {}):
            assert f"student/train/{param}_{term}" in tags  # a schedule is visible as it moves


def test_report_compares_every_preset_of_the_sweep(sweep, tmp_path, kdcl_main):
    proc, sweep_dir = sweep
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = kdcl_main(["report", str(sweep_dir)], tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    lines = (sweep_dir / "report.csv").read_text().splitlines()
    assert lines[0].startswith("settings,runs,seeds,teacher_acc_mean,teacher_acc_std,student_acc_mean")
    assert sorted(line.split(",")[0] for line in lines[1:]) == sorted(f"distill={p}" for p in PRESETS)
    assert (sweep_dir / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "distill=kd+at" in (sweep_dir / "report.md").read_text()

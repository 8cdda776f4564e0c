"""`kdcl report`: jobs grouped by their overrides without the seed, accuracy mean ± sample std."""

import json
import statistics

import pytest
import yaml

from kdcl.errors import KdclError
from kdcl.report import write_report


def fake_job(root, num, overrides, seed, teacher_acc, student_acc):
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"seed={seed}", "progress_bar=lines"]))
    stages = [
        {"name": "teacher", "model": "resnet18", "params": 11_000_000, "test_acc": teacher_acc},
        {"name": "student", "model": "mobilenetv3_small_100", "params": 1_500_000, "test_acc": student_acc},
    ]
    (job / "summary.json").write_text(json.dumps({"seed": seed, "stages": stages}))


def test_report_groups_by_overrides_and_averages_over_seeds(tmp_path):
    accs = {"distill=kd": [0.90, 0.92, 0.97], "distill=none": [0.80, 0.84, 0.85]}
    num = 0
    for setting, values in accs.items():
        for seed, acc in enumerate(values):
            fake_job(tmp_path, num, [setting], seed, 0.98, acc)
            num += 1
    rows = {r["settings"]: r for r in write_report(tmp_path)}
    assert set(rows) == set(accs)
    for setting, values in accs.items():
        assert rows[setting]["runs"] == 3 and rows[setting]["seeds"] == [0, 1, 2]
        mean, std = rows[setting]["student"]
        assert mean == pytest.approx(sum(values) / 3) and std == pytest.approx(statistics.stdev(values))
    md = (tmp_path / "report.md").read_text()
    assert "| distill=kd | 3 | 98.00 ± 0.00 | 93.00 ± 3.61 |" in md
    assert (tmp_path / "report.png").is_file() and len((tmp_path / "report.csv").read_text().splitlines()) == 3


def test_report_on_a_folder_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(KdclError, match="no finished runs"):
        write_report(tmp_path)

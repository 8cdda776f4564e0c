"""scripts/bench.py runs every variant on real timm models and Lightning trainers and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_times_every_variant_and_writes_ratios(tmp_path):
    args = ["--teacher", "test_resnet", "--student", "test_efficientnet", "--size", "16", "--batch", "16",
            "--warmup", "1", "--steps", "2", "--rounds", "2", "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/bench.py"), *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "c/a = " in proc.stdout and "c1/b = " in proc.stdout
    result = json.loads((tmp_path / "bench-test_resnet-test_efficientnet-16-16-32-true.json").read_text())
    variants = ("a_student_alone", "b_kd_online", "c1_kd_cached_first_epoch", "c_kd_cached", "d_plain_pytorch_cached")
    for name in variants:
        assert result[name]["steps"] == 4 and result[name]["median_ms"] > 0  # 2 timed steps × 2 rounds
    times = {name: result[name]["median_ms"] for name in variants}
    assert result["ratios"]["c/d"] == times["c_kd_cached"] / times["d_plain_pytorch_cached"]
    assert result["per_epoch_s"]["teacher_pass"] > 0

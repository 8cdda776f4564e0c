"""scripts/bench.py runs every variant on real timm models and Lightning trainers and writes its JSON."""

from __future__ import annotations

import json
import runpy
import sys
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_times_every_variant_and_writes_ratios(tmp_path):
    args = ["--teacher", "test_resnet", "--student", "test_efficientnet", "--size", "16", "--batch", "16",
            "--warmup", "1", "--steps", "2", "--rounds", "2", "--out", str(tmp_path)]  # fmt: skip
    out = StringIO()  # the script as `python scripts/bench.py ...` runs it, in this process (no start-up)
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out):
        patch.chdir(tmp_path)
        patch.setattr(sys, "argv", ["bench.py", *args])
        runpy.run_path(str(ROOT / "scripts/bench.py"), run_name="__main__")
    assert "c/a = " in out.getvalue() and "c1/b = " in out.getvalue()
    result = json.loads((tmp_path / "bench-test_resnet-test_efficientnet-16-16-32-true.json").read_text())
    variants = ("a_student_alone", "b_kd_online", "c1_kd_cached_first_epoch", "c_kd_cached", "d_plain_pytorch_cached")
    for name in variants:
        assert result[name]["steps"] == 4 and result[name]["median_ms"] > 0  # 2 timed steps × 2 rounds
    times = {name: result[name]["median_ms"] for name in variants}
    assert result["ratios"]["c/d"] == times["c_kd_cached"] / times["d_plain_pytorch_cached"]
    assert result["per_epoch_s"]["teacher_pass"] > 0

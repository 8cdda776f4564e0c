"""scripts/bench.py runs every variant on real timm models and Lightning trainers and writes its JSON."""

from __future__ import annotations

import json
import re
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
    printed = out.getvalue()
    result = json.loads((tmp_path / "bench-test_resnet-test_efficientnet-16-16-32-true.json").read_text())
    variants = ("a_student_alone", "b_kd_online", "c1_kd_cached_first_epoch", "c_kd_cached", "d_plain_pytorch_cached")
    rounds: dict[str, list[float]] = {}  # "round N: <variant> <median of that round> ms/step", one line per round
    for name, ms in re.findall(r"^round \d+: +(\S+) +([\d.]+) ms/step$", printed, re.M):
        rounds.setdefault(name, []).append(float(ms))
    assert sorted(rounds) == sorted(variants)
    for name in variants:
        assert result[name]["steps"] == 4 and len(rounds[name]) == 2  # 2 timed steps × 2 rounds
        # the median over all timed steps lies between the rounds' medians (printed to 0.1 ms)
        assert min(rounds[name]) - 0.051 <= result[name]["median_ms"] <= max(rounds[name]) + 0.051, name
    a, b, c1, c, d = (result[name]["median_ms"] for name in variants)
    assert result["ratios"] == {"c/a": c / a, "b/a": b / a, "c/d": c / d, "c1/b": c1 / b}
    shown = dict(re.findall(r"\b(c/a|b/a|c/d|c1/b) = ([\d.]+)", printed))
    assert {k: float(v) for k, v in shown.items()} == pytest.approx(result["ratios"], abs=6e-4)  # printed to 3 places
    examples = result["setup"]["epoch_examples"]
    per_epoch = {"teacher_share_of_online_kd (b-a)": (b - a) * examples / 16 / 1000,  # batch 16: ms/step → s/epoch
                 "storing_in_the_first_epoch (c1-a)": (c1 - a) * examples / 16 / 1000,
                 "teacher_pass": result["teacher_pass_ms_per_example"] * examples / 1000}  # fmt: skip
    assert result["per_epoch_s"] == pytest.approx(per_epoch, rel=1e-9)

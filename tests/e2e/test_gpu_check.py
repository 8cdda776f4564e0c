"""scripts/gpu_check.sh where no GPU is: it starts from the repo as it is, finds no GPU, says so in one line,
records it, and exits 0 before any heavy work (its GPU steps run only where a GPU is: see the script)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_without_a_gpu_says_so_and_exits_cleanly(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # hides any GPU this machine may have
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("gpu_check: no GPU (torch ") and first.endswith("CUDA not available): nothing to check")
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["status"] == "no_gpu" and report["steps"] == [] and report["torch"]
    assert "No GPU" in (out / "gpu_check.md").read_text()
    assert not (out / "runs").exists()  # nothing was run

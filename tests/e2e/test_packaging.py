"""A non-editable install ships conf/ inside the package and runs from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import SEED

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_the_config_tree_and_runs_from_anywhere(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(wheels.glob("kdcl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "kdcl/conf/train.yaml" in names and "kdcl/conf/data/digits.yaml" in names

    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = "import kdcl, sys; print(kdcl.__file__); from kdcl.cli import main; main(sys.argv[1:])"
    run = subprocess.run(
        [sys.executable, "-c", code, "train", "teacher=tiny", "student=tiny", "debug=fast", "progress_bar=none",
         "trainer.limit_test_batches=1", "latency.batches=[]", f"seed={SEED}"],
        cwd=elsewhere, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stdout.splitlines()[0].startswith(str(site))  # the installed copy ran, not the checkout
    assert (elsewhere / "outputs" / "train").is_dir()
    assert run.stdout.strip().splitlines()[-1].startswith("run directory: ")

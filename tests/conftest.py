"""Shared helpers: run the real `kdcl` CLI in a subprocess, in a temporary working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Small but real: timm's tiny test models on the real digits data, two short epochs per stage.
TINY = ["teacher=tiny", "student=tiny", "trainer.max_epochs=2", "progress_bar=lines"]


def run_kdcl(args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "kdcl.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def run_dir_of(proc: subprocess.CompletedProcess) -> Path:
    """The run directory named by the last line `kdcl train` prints."""
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("run directory: "), proc.stdout[-2000:] + proc.stderr[-2000:]
    return Path(last.removeprefix("run directory: "))


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())

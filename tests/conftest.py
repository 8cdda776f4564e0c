"""Shared helpers: run the real `kdcl` CLI in a subprocess or in this process, in a temporary directory;
session-wide runs that several test files read instead of training their own."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

# The seed of every run the suite trains: KDCL_TEST_SEED=N shifts it (`KDCL_TEST_SEED=1 make test`), so a test
# that holds only on one trajectory is found before a CPU with other floating point finds it. Tests that
# compare two runs give both this seed; a test that sweeps seeds starts at it.
SEED = int(os.environ.get("KDCL_TEST_SEED", "0"))
# "It learned": three times chance on digits' ten classes. Any model that learned anything clears it on any
# CPU, one that learned nothing does not; no test asks for an accuracy that only some trajectories reach.
LEARNED = 0.3
# Small but real: timm's tiny test models on the real digits data at 16 px (the 8-px originals lose nothing;
# a step costs about 60 % of one at the default 32 px), two short epochs per stage. Latency is
# timed in eager PyTorch only: ONNX Runtime's needs an ONNX export per stage (2–3 s); tests that check it
# (test_trainer_spec, test_export) ask for it.
TINY = ["teacher=tiny", "student=tiny", "trainer.max_epochs=2", "progress_bar=lines", "data.image_size=16",
        "latency.runtimes=[eager]", "latency.speedup_runtime=eager", f"seed={SEED}"]  # fmt: skip
# The shared tiny run: three epochs per stage, pinned to the CPU so that runs compared with it exactly
# (eval, resume, cached vs online teacher outputs) compute the same numbers on any machine.
TINY_RUN = [*TINY, "trainer=cpu", "trainer.max_epochs=3"]


def pytest_configure(config) -> None:
    """Under pytest-xdist (`make test`), each worker trains with its share of the cores, and so do the kdcl
    processes it starts (OMP_NUM_THREADS): workers with every core each would fight over them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)


def pytest_report_header() -> str:
    return f"kdcl: runs trained at seed {SEED} (KDCL_TEST_SEED)"


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


def run_python(code: str) -> str:
    """The standard output of `code` run in a fresh interpreter (what a process starting from nothing loads)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def run_dir_of(proc) -> Path:
    """The run directory named by the last line `kdcl train` prints."""
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("run directory: "), proc.stdout[-2000:] + proc.stderr[-2000:]
    return Path(last.removeprefix("run directory: "))


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@dataclass
class InProcess:
    """What `kdcl.cli.main` did in this process: exit status (0 when it returned), stdout, stderr."""

    returncode: int
    stdout: str
    stderr: str


def in_process(args: list[str], cwd: Path) -> InProcess:
    """Call `kdcl.cli.main(args)` in this process, in `cwd`: no interpreter start-up, no imports repeated
    (5-7 s a run here). Usable from fixtures of any scope.

    `kdcl train` hands sys.argv to Hydra and Hydra configures logging: both are restored afterwards, and
    Hydra's global state is cleared, so one call leaves nothing behind for the next.
    """
    from hydra.core.global_hydra import GlobalHydra

    from kdcl.cli import main

    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out), redirect_stderr(err):
        patch.chdir(cwd)
        patch.setattr(sys, "argv", ["kdcl"])
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            GlobalHydra.instance().clear()
            root.setLevel(saved[0])
            for handler in [h for h in root.handlers if h not in saved[1]]:
                root.removeHandler(handler)
                handler.close()
            for handler in saved[1]:
                if handler not in root.handlers:
                    root.addHandler(handler)
    return InProcess(code, out.getvalue(), err.getvalue())


@pytest.fixture
def kdcl_main():
    """`in_process` for a test: kdcl_main(args, cwd) -> InProcess."""
    return in_process


def train_once(cwd: Path, args: list[str]) -> Path:
    proc = in_process(["train", *args], cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir_of(proc)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """teacher=tiny → student=tiny, three epochs each on the CPU: read by many tests, written once.
    Tests must not change it (those that resume it check that nothing changes)."""
    cwd = tmp_path_factory.mktemp("tiny")
    run_dir = train_once(cwd, TINY_RUN)
    assert run_dir.is_relative_to(cwd / "outputs" / "train")  # per-run directories under outputs/
    return run_dir

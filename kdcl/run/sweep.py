"""Sweeps that survive their failed jobs, and the optional extras a launcher or sweeper preset needs.

A job that fails (bad data, a non-finite loss, out of memory) records its error in <job>/failure.json
and returns NaN (a failed trial for Optuna), so Hydra runs the other jobs to the end; the launching
process then writes <sweep>/sweep.json (every job: its settings, status and error) and `kdcl train -m`
exits with one line counting the failures. Hydra stops a sweep at the first job that raises, hence this.
"""

from __future__ import annotations

import importlib
import math
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kdcl.common.errors import KdclError, SweepFailed
from kdcl.reporting.jobs import FAILURE, job_label, sweep_jobs

SWEEP = "sweep.json"
# a preset -> the module it needs and the optional extra that installs it
EXTRAS = {
    ("hydra/launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "cluster", "hydra-joblib-launcher"),
    ("hydra/launcher", "submitit_local"): (
        "hydra_plugins.hydra_submitit_launcher",
        "cluster",
        "hydra-submitit-launcher",
    ),
    ("hydra/launcher", "slurm"): ("hydra_plugins.hydra_submitit_launcher", "cluster", "hydra-submitit-launcher"),
    ("hydra/launcher", "submitit_slurm"): (
        "hydra_plugins.hydra_submitit_launcher",
        "cluster",
        "hydra-submitit-launcher",
    ),
    ("hydra/sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "search", "hydra-optuna-sweeper"),
    ("hparams_search", "*"): ("hydra_plugins.hydra_optuna_sweeper", "search", "hydra-optuna-sweeper"),
}


def check_extras(overrides: list[str]) -> None:
    """A launcher or sweeper preset whose plugin is not installed: one line naming the extra (exit 2)."""
    for override in overrides:
        group, _, value = override.lstrip("+~").partition("=")
        need = EXTRAS.get((group, value)) or EXTRAS.get((group, "*"))
        if need is None or value in ("", "null"):
            continue
        module, extra, package = need
        try:
            importlib.import_module(module)
        except ImportError:
            raise KdclError(
                f"{group}={value} needs {package}, in kdcl's optional extra '{extra}': pip install 'kdcl[{extra}]'"
            ) from None


def in_sweep_job() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failure(exc: BaseException) -> float:
    """Write this sweep job's error into its directory, print it as one line, and return NaN."""
    from hydra.core.hydra_config import HydraConfig

    from kdcl.common.io import atomic_write_json, atomic_write_text

    hydra = HydraConfig.get()
    job_dir = Path(hydra.runtime.output_dir)
    line = " ".join(str(exc).split()) or type(exc).__name__
    status = exc.exit_status if isinstance(exc, KdclError) else 1
    job_dir.mkdir(parents=True, exist_ok=True)
    if not isinstance(exc, KdclError):  # not one of kdcl's own one-line errors: keep the traceback too
        atomic_write_text(job_dir / "failure-traceback.txt", "".join(traceback.format_exception(exc)))
        line = f"{type(exc).__name__}: {line}"
    atomic_write_json(job_dir / FAILURE, {"job": int(hydra.job.num), "overrides": list(hydra.overrides.task),
                                          "exit_status": status, "error": line})  # fmt: skip
    print(f"error: sweep job #{hydra.job.num} ({' '.join(hydra.overrides.task)}) failed: {line}",
          file=sys.stderr, flush=True)  # fmt: skip
    return math.nan


_OUTCOME: list[SweepFailed | None] = [None]  # set by the callback in the launching process


def sweep_outcome() -> SweepFailed | None:
    """The failure count of the sweep this process just launched (None: no sweep, or every job finished)."""
    outcome, _OUTCOME[0] = _OUTCOME[0], None
    return outcome


def failure_line(sweep_dir: Path, jobs: list[dict]) -> SweepFailed:
    failed = [j for j in jobs if j["status"] != "done"]
    named = "; ".join(
        f"{job_label(j)} {' '.join(j['overrides']) or '(no overrides)'}: {j['error'][:160]}" for j in failed
    )
    return SweepFailed(f"{len(failed)} of {len(jobs)} sweep jobs failed ({named}); the others finished; "
                       f"details in {Path(sweep_dir) / SWEEP}")  # fmt: skip


class SweepSummary(Callback):
    """Hydra callback (conf/hydra/default.yaml): after a sweep, <sweep>/sweep.json and the failure count."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _OUTCOME[0] = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from kdcl.common.io import atomic_write_json

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        jobs = sweep_jobs(sweep_dir)
        failed = [j for j in jobs if j["status"] != "done"]
        atomic_write_json(sweep_dir / SWEEP, {"jobs": jobs, "done": len(jobs) - len(failed), "failed": len(failed)})
        _OUTCOME[0] = failure_line(sweep_dir, jobs) if failed else None

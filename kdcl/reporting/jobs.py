"""What a sweep's jobs leave behind, read back: each job's record (settings, status, error) and the objective
a sweeper optimises. Written by kdcl/run/sweep.py, read by it and by `kdcl report` on a search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

FAILURE = "failure.json"


def objective(summary: dict) -> float | None:
    """The final model's best validation accuracy: what a hyper-parameter search maximises."""
    values = [s.get("best_val_acc") for s in summary.get("stages", [])]
    values = [v for v in values if v is not None]
    return float(values[-1]) if values else None


def job_record(job_dir: Path) -> dict:
    """One job of a sweep: its number, settings, status (done | failed | unfinished) and error."""
    from kdcl.common.io import read_json

    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    record: dict[str, Any] = {"job": int(job_dir.name), "dir": job_dir.name, "overrides": overrides}
    if (job_dir / FAILURE).is_file():
        failure = read_json(job_dir / FAILURE)
        return {**record, "status": "failed", "exit_status": failure["exit_status"], "error": failure["error"]}
    if (job_dir / "summary.json").is_file():
        return {**record, "status": "done"}
    return {**record, "status": "unfinished", "error": "the job ended without a summary or a recorded error"}


def sweep_jobs(sweep_dir: Path) -> list[dict]:
    dirs = [d for d in Path(sweep_dir).iterdir() if d.is_dir() and d.name.isdigit()]
    return [job_record(d) for d in sorted(dirs, key=lambda d: int(d.name))]

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


def job_number(job_dir: Path) -> int | None:
    """The job's number in its sweep, as Hydra recorded it (a `hydra.sweep.subdir` such as `s${seed}` does not
    name the job by its number)."""
    hydra_file = job_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        num = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.job.num")
        if num is not None:
            return int(num)
    return int(job_dir.name) if job_dir.name.isdigit() else None


def job_record(job_dir: Path, root: Path | None = None) -> dict:
    """One job of a sweep: its number, its directory (relative to `root`), settings, status (done | failed |
    unfinished) and error."""
    from kdcl.common.io import read_json

    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    where = job_dir.relative_to(root).as_posix() if root is not None else job_dir.name
    record: dict[str, Any] = {"job": job_number(job_dir), "dir": where, "overrides": overrides}
    if (job_dir / FAILURE).is_file():
        failure = read_json(job_dir / FAILURE)
        return {**record, "status": "failed", "exit_status": failure["exit_status"], "error": failure["error"]}
    if (job_dir / "summary.json").is_file():
        return {**record, "status": "done"}
    return {**record, "status": "unfinished", "error": "the job ended without a summary or a recorded error"}


def job_label(record: dict) -> str:
    """How a job is named in messages: `#3`, or `#3 (kd/s3)` where its directory is not its number."""
    number = f"#{record['job']}" if record["job"] is not None else ""
    return number if record["dir"] == str(record["job"]) else f"{number} ({record['dir']})".strip()


def job_dirs(root: Path) -> list[Path]:
    """Every job directory under `root` at any depth (Hydra's `.hydra/` marks one; without it, with
    `hydra.output_subdir=null`, a sweep's numbered sub-directories), in path order."""
    marked = {p.parent.parent for p in Path(root).glob("**/.hydra/overrides.yaml")}
    numbered = {d for d in Path(root).iterdir() if d.is_dir() and d.name.isdigit()}
    return sorted(marked | numbered)


def sweep_jobs(sweep_dir: Path) -> list[dict]:
    records = [job_record(d, sweep_dir) for d in job_dirs(sweep_dir) if d != Path(sweep_dir)]
    return sorted(records, key=lambda r: (r["job"] is None, r["job"] or 0, r["dir"]))

"""The run manifest (run.json): which stages are done and what they produced. Written atomically."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kdcl import __version__
from kdcl.common.io import atomic_write_json, read_json

MANIFEST = "run.json"


class Manifest:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / MANIFEST
        if self.path.is_file():
            self.data = read_json(self.path)
        else:
            self.data = {"kdcl_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "stages": {}}

    @staticmethod
    def exists(run_dir: Path) -> bool:
        return (Path(run_dir) / MANIFEST).is_file()

    def is_done(self, stage: str) -> bool:
        return self.data["stages"].get(stage, {}).get("status") == "done"

    def result(self, stage: str) -> dict:
        return self.data["stages"][stage]["result"]

    def mark_running(self, stage: str) -> None:
        self.data["stages"][stage] = {"status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.save()

    def mark_done(self, stage: str, result: dict) -> None:
        self.data["stages"][stage] = {
            "status": "done",
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "result": result,
        }
        self.save()

    def mark_failed(self, stage: str, reason: str) -> None:
        self.data["stages"][stage] = {**self.data["stages"].get(stage, {}), "status": "failed", "reason": reason,
                                      "failed": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
        self.save()

    def record_changes(self, changes: dict) -> None:
        """Settings a resume changed, {key: (old, new)}: the stopped stage and those after it run with them."""
        stopped = [name for name, s in self.data["stages"].items() if s.get("status") != "done"]
        self.data.setdefault("resumed_with_changes", []).append(
            {
                "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "changes": {k: {"from": old, "to": new} for k, (old, new) in changes.items()},
                "from_stage": stopped[0] if stopped else None,
            }
        )
        self.save()

    def save(self) -> None:
        """Written by the first process only: under DDP every rank runs the pipeline (torchrun, SLURM)."""
        from kdcl.common.ranks import process_rank

        if process_rank() == 0:
            atomic_write_json(self.path, self.data)


def started_in(run_dir: Path) -> Path | None:
    """The directory the run was started from (environment.json's `cwd`), where its relative paths
    (teacher.checkpoint=, data.root=, paths.output_dir) point; None for a run recorded before kdcl kept it,
    or when that directory is gone."""
    try:
        cwd = read_json(Path(run_dir) / "environment.json").get("cwd")
    except (OSError, ValueError):
        return None
    return Path(cwd) if cwd and Path(cwd).is_dir() else None


def requeued_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds this very job's run from before a requeue (SLURM preemption or time limit,
    through submitit): a submitit job's directory is its sweep's, made fresh for that sweep, so a run
    found in it was started by an earlier attempt of the same job."""
    in_submitit_job = bool(os.environ.get("SUBMITIT_EXECUTOR") or os.environ.get("SUBMITIT_LOCAL_JOB_ID"))
    return in_submitit_job and Manifest.exists(run_dir) and (Path(run_dir) / "config.yaml").is_file()

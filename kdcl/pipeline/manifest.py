"""The run manifest (run.json): which stages are done and what they produced. Written atomically."""

from __future__ import annotations

import time
from pathlib import Path

from kdcl import __version__
from kdcl.io import atomic_write_json, read_json

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

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

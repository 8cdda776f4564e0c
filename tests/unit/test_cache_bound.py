"""paths.cache_max_gb: the shared cache evicts its least recently used entries to fit, never the one just
written nor one whose lock another process holds (a job building it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from kdcl.common.cache import evict, read_entry, write_entry

MB = 2**20
HOLD = "import fcntl, pathlib, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f.fileno(), fcntl.LOCK_EX); pathlib.Path(sys.argv[2]).touch(); time.sleep(120)"  # noqa: E501


def entry(directory: Path, name: str, age_s: float) -> Path:
    """A one-MB entry last used `age_s` seconds ago."""
    path = directory / f"{name}.pt"
    write_entry(path, name, {"kind": "test"}, {"x": torch.zeros(MB // 4)}, "a test", 0.0)
    used = time.time() - age_s
    os.utime(path, (used, used))
    return path


def held_by_another_process(lock: Path, tmp_path: Path) -> subprocess.Popen:
    ready = tmp_path / f"{lock.stem}.ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), str(ready)])
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert holder.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    return holder


def test_the_bound_evicts_the_least_recently_used_never_one_a_job_holds(tmp_path):
    cache = tmp_path / "cache"
    oldest, old, recent, new = (entry(cache, n, age) for n, age in (("a", 400), ("b", 300), ("c", 200), ("d", 0)))
    read_entry(old, "b")  # a job reuses b: its last use is now the newest of all
    holder = held_by_another_process(oldest.with_suffix(".lock"), tmp_path)
    try:
        evicted = evict(cache, int(2.5 * MB), keep=new)  # four entries of ~1 MB: two must go
    finally:
        holder.kill()
        holder.wait()
    assert evicted == ["c.pt", "b.pt"]  # a is held (skipped); c was used longest ago, then b
    assert oldest.is_file() and new.is_file() and not recent.exists() and not old.exists()
    assert not recent.with_suffix(".json").exists()  # its sidecar goes with it
    assert evict(cache, None) == [] and evict(cache, 10 * MB) == []  # no bound, or room: nothing goes

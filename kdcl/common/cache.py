"""The cache shared by runs (`paths.cache_dir`, default <paths.output_dir>/cache): teachers' stored logits
and views, a given teacher's test results, and each architecture's MACs and latency on this machine, each a
file named by the key of what made it (content-addressed).

Every job of a sweep with the same teacher and data asks for the same name, so one pass serves them
all; a changed setting is a different name, so a stale entry is never read. Entries are written
atomically (temporary file, then rename: a reader sees a whole file or none) and built under an
exclusive lock file (fcntl.flock), so two jobs that need the same entry at once build it once: the
second waits, then reads what the first wrote. Each entry has a small JSON sidecar (what it is, who
built it, its size, the pass's time) that `kdcl cache list` shows; `kdcl cache clear` frees them. With
`paths.cache_max_gb` set, each write evicts the least recently used entries (an entry's file time is its
last use) until the cache fits, never one whose lock a job holds (it is being built).
flock is advisory and local: jobs on several hosts sharing a network file system may each build an
entry (still atomic, still correct, only not shared).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from kdcl.common.io import atomic_torch_save, atomic_write_json, read_json

SIDECAR = ".json"


def cache_bound(cfg: DictConfig) -> int | None:
    """paths.cache_max_gb in bytes (None: no bound)."""
    gb = (cfg.get("paths") or {}).get("cache_max_gb")
    return None if gb is None else int(float(gb) * 2**30)


def cache_dir(cfg: DictConfig) -> Path:
    paths = cfg.get("paths") or {}
    return Path(paths.get("cache_dir") or Path(paths.get("output_dir", "outputs")) / "cache")


def store_path(cfg: DictConfig, kind: str, model: str, key: str) -> Path:
    """<cache_dir>/<kind>-<model>-<first 20 hex digits of the key>.pt"""
    return cache_dir(cfg) / f"{kind}-{model}-{key[:20]}.pt"


@dataclass
class CacheEntry:
    """What `kdcl cache list` shows of an entry and what a stage records of the stores it used."""

    file: str
    key: str
    what: dict
    built_by: str  # the run directory (and host, process) of the job that built it
    size_mb: float
    pass_s: float  # the building pass's time
    created: str
    built: bool = False  # built by this job (False: reused)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "what"}


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block; waits for another holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_entry(path: Path, key: str) -> tuple[dict, CacheEntry] | None:
    """The entry at `path` if it is whole and made under `key`; None otherwise (missing, damaged, other key)."""
    sidecar = path.with_suffix(SIDECAR)
    if not (path.is_file() and sidecar.is_file()):
        return None
    try:
        stored = torch.load(path, weights_only=True, map_location="cpu")
        meta = read_json(sidecar)
    except Exception:  # a damaged entry is only a cache entry: build it again
        return None
    if not isinstance(stored, dict) or stored.get("key") != key or meta.get("key") != key:
        return None
    known = CacheEntry.__dataclass_fields__
    with suppress(OSError):  # gone meanwhile (evicted by another job), or a cache this user may only read
        os.utime(path)  # its last use: what the least-recently-used bound evicts by
    return stored["tensors"], CacheEntry(**{k: v for k, v in meta.items() if k in known})


def write_entry(path: Path, key: str, what: dict, tensors: dict, built_by: str, pass_s: float) -> CacheEntry:
    """Write an entry and its sidecar (atomically; the caller holds the entry's lock)."""
    atomic_torch_save({"key": key, "tensors": tensors}, path)
    entry = CacheEntry(path.name, key, what, f"{built_by} (host {socket.gethostname()}, PID {os.getpid()})",
                       round(path.stat().st_size / 2**20, 3), round(pass_s, 2), time.strftime("%Y-%m-%d %H:%M:%S"),
                       built=True)  # fmt: skip
    atomic_write_json(path.with_suffix(SIDECAR), asdict(entry) | {"built": False})
    return entry


def publish(path: Path, key: str, what: dict, tensors: dict, built_by: str, max_bytes: int | None = None) -> None:
    """Share what a job computed anyway (complete stored logits), unless another job already did."""
    with exclusive(path.with_suffix(".lock")):
        if read_entry(path, key) is None:
            write_entry(path, key, what, tensors, built_by, 0.0)
    evict(path.parent, max_bytes, keep=path)


def held(lock: Path) -> bool:
    """Whether a job holds this entry's lock (it is building the entry) right now."""
    if not lock.is_file():
        return False
    with open(lock, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return False


def stats(directory: Path) -> dict[Path, os.stat_result]:
    """Each entry file's stat, read once; files another job removes meanwhile are left out."""
    found = {}
    for f in directory.glob("*.pt"):
        with suppress(FileNotFoundError):
            found[f] = f.stat()
    return found


def evict(directory: Path, max_bytes: int | None, keep: Path | None = None) -> list[str]:
    """Delete the least recently used entries until the cache fits in `max_bytes`; never `keep` (just
    written) nor an entry a job holds. A job that already read an evicted entry keeps its copy in memory.
    Returns the evicted files' names (each also printed)."""
    if max_bytes is None or not directory.is_dir():
        return []
    files = sorted(stats(directory).items(), key=lambda item: item[1].st_mtime)
    total, evicted = sum(st.st_size for _, st in files), []
    for f, st in files:
        if total <= max_bytes:
            break
        if f == keep or held(f.with_suffix(".lock")):
            continue
        # the lock file stays: a job may hold it open, and a flock on a new file would not see that one
        for suffix in (".pt", SIDECAR):
            f.with_suffix(suffix).unlink(missing_ok=True)
        total -= st.st_size
        evicted.append(f.name)
        print(f"evicted {f.name} ({st.st_size / 2**20:.2f} MB, least recently used) from {directory}: paths.cache_max_gb",
              flush=True)  # fmt: skip
    return evicted


def load_or_build(path: Path, key: str, what: dict, build: Callable[[], dict], run_dir: str,
                  stage_name: str, max_bytes: int | None = None) -> tuple[dict, CacheEntry]:  # fmt: skip
    """The tensors stored at `path` under `key`, or `build()`'s, written there for every later job.
    The log line says whether this job built the entry or reused one (and whose)."""
    found = read_entry(path, key)
    if found is None:
        with exclusive(path.with_suffix(".lock")):
            found = read_entry(path, key)  # another job may have built it while this one waited
            if found is None:
                started = time.perf_counter()
                tensors = build()
                pass_s = time.perf_counter() - started
                entry = write_entry(path, key, what, tensors, run_dir, pass_s)
                print(f"[{stage_name}] built the shared store {path} ({entry.size_mb:.2f} MB, {pass_s:.1f}s); "
                      "later jobs with the same teacher and data reuse it", flush=True)  # fmt: skip
        if found is None:  # built here: the lock is released, now make room
            evict(path.parent, max_bytes, keep=path)
            return tensors, entry
    tensors, entry = found
    print(f"[{stage_name}] reused the shared store {path} ({entry.size_mb:.2f} MB), built by {entry.built_by}",
          flush=True)  # fmt: skip
    return tensors, entry


def entries(directory: Path) -> list[dict]:
    """Every entry's sidecar in `directory`, oldest first."""
    found = []
    for sidecar in sorted(directory.glob(f"*{SIDECAR}")) if directory.is_dir() else []:
        try:
            meta = read_json(sidecar)
        except (OSError, ValueError):
            continue
        data = sidecar.with_suffix(".pt")
        meta["size_mb"] = round(data.stat().st_size / 2**20, 3) if data.is_file() else 0.0
        meta["last_used"] = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data.stat().st_mtime)) if data.is_file() else "-"
        )
        found.append(meta)
    return sorted(found, key=lambda m: m.get("created", ""))

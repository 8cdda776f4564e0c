"""One process per run directory: an OS lock (flock) on <run>/.lock, held while a process trains the run.

The operating system drops the lock when the process ends, however it ends (a SIGKILLed run leaves no
stale lock); the file keeps the holder's PID and host so a refused process can say who holds it.
Read-only commands (eval, report) never take it. Written by hand: no dependency offers a process lock
that names its holder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from kdcl.common.errors import KdclError

LOCK_FILE = ".lock"
_HELD: dict[Path, int] = {}  # run directories this process holds (flock is per open file: take it once)


def in_use(run_dir: Path) -> KdclError:
    return KdclError(
        f"run directory {run_dir} is in use by another kdcl process ({holder_of(run_dir)}); wait for it to "
        "finish or stop it (a killed process releases the run at once), or train into a new directory"
    )


def holder_of(run_dir: Path) -> str | None:
    """Who holds `run_dir` ("PID n on host h, since t"), or None when no process does."""
    path = Path(run_dir).resolve() / LOCK_FILE
    if Path(run_dir).resolve() in _HELD or not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return read_holder(fd)
    finally:
        os.close(fd)  # closing drops a shared lock taken only to look


def lock_run_dir(run_dir: Path) -> None:
    """Hold `run_dir` for the rest of this process, or refuse with one line naming the holder."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise in_use(run_dir) from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode())  # fmt: skip
    _HELD[run_dir] = fd


def read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"PID {holder['pid']} on host {holder['host']}, since {holder['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


def release_run_dir(run_dir: Path) -> None:
    """Give the run up before the process ends (in-process callers such as tests; a process exiting
    releases it anyway)."""
    fd = _HELD.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)

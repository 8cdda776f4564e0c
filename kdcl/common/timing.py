"""Where a job's wall time went: named parts, timed as they run (summary.json's `timing`, the run's last line)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


class PartTimer:
    """Wall seconds of named parts, in the order they first ran (a part that runs twice adds up). A part
    started inside another is carved out of it: the outer part's seconds exclude the inner one's, so the
    parts add up to the wall time they cover."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.seconds: dict[str, float] = {}
        self.clock = clock
        self._open: list[tuple[str, float]] = []  # the parts running now, innermost last, each since when

    def _charge(self, now: float) -> None:
        """Give the innermost running part the time since it last started or resumed."""
        if self._open:
            name, since = self._open[-1]
            self.seconds[name] = self.seconds.get(name, 0.0) + now - since

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        now = self.clock()
        self._charge(now)
        self.seconds.setdefault(name, 0.0)
        self._open.append((name, now))
        try:
            yield
        finally:
            now = self.clock()
            self._charge(now)
            self._open.pop()
            if self._open:  # the outer part resumes
                self._open[-1] = (self._open[-1][0], now)

    def rounded(self) -> dict[str, float]:
        return {name: round(s, 2) for name, s in self.seconds.items()}


def seconds_text(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


@dataclass(frozen=True)
class StartUp:
    """A process's time before its first job starts: loading torch, timm and Lightning, then the rest
    (composing the config, the checks of every sweep point)."""

    imports_s: float
    checks_s: float


def load_frameworks() -> float:
    """Load torch, timm and Lightning (the checks and the run need them); the seconds it took (none when
    this process has them already)."""
    start = time.perf_counter()
    import pytorch_lightning  # noqa: F401
    import timm  # noqa: F401
    import torch  # noqa: F401

    return time.perf_counter() - start

"""Python's cyclic garbage collector around a `kdcl train` process's start-up and exit.

Why (measured on a 2-core Xeon): importing torch, timm and Lightning leaves about half a million long-lived
objects. Each full collection walks all of them: eight happen during the imports (0.8 s), one more would
clear their garbage (0.4 s), and the interpreter walks them once more at exit (1.3 s). So the process
collects nothing while it starts, and freezes what the imports built (gc.freeze: kept, never walked
again), their few thousand garbage objects included: a fixed amount, once per process. Only a fresh `kdcl`
process does this: tests that call kdcl.cli.main in their own process keep the collector as it is.
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager


def pause_for_start_up() -> None:
    """No collections until the imports are done; none over start-up's objects at exit either."""
    gc.disable()
    atexit.register(gc.freeze)  # atexit runs before the interpreter's final collection


@contextmanager
def frozen_imports() -> Iterator[None]:
    """Around the framework imports of a paused process: the garbage of what ran before is collected (cheap:
    few objects exist yet), what the imports build is frozen, and collecting starts again."""
    paused = not gc.isenabled()
    if paused:
        gc.collect()
    try:
        yield
    finally:
        if paused:
            resume_after_start_up()


def resume_after_start_up() -> None:
    """Freeze what start-up built and collect again from here on (nothing to do when not paused)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()

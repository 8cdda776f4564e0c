"""A fresh `kdcl train` process pauses Python's collector during start-up: it must come back on afterwards."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gc, weakref
from kdcl.common.gc_pause import pause_for_start_up, resume_after_start_up

class Node:
    pass

pause_for_start_up()
start_up = [Node() for _ in range(1000)]  # what imports leave behind: kept, frozen
resume_after_start_up()
assert gc.isenabled() and gc.get_freeze_count() >= 1000
cycle = Node(); cycle.self = cycle; watch = weakref.ref(cycle)
del cycle
gc.collect()
print("collected" if watch() is None else "leaked")
"""


def test_the_collector_collects_again_after_start_up():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "collected"

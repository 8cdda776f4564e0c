"""A fresh `kdcl train` process pauses Python's collector during start-up: it must come back on afterwards."""

from __future__ import annotations

from tests.conftest import run_python

SCRIPT = """
import gc, weakref
from kdcl.common.gc_pause import frozen_imports, pause_for_start_up, resume_after_start_up

class Node:
    pass

def cycle():
    node = Node(); node.self = node
    return weakref.ref(node)

pause_for_start_up()
before = cycle()  # garbage of what runs before the imports (composition): collected, not frozen
with frozen_imports():
    built = [Node() for _ in range(1000)]  # what imports build: kept, frozen
assert gc.isenabled() and gc.get_freeze_count() >= 1000
resume_after_start_up()  # a second call (train's own, before Hydra runs) changes nothing
after = cycle()
gc.collect()
print("before collected" if before() is None else "before leaked", "after collected" if after() is None else "after leaked")
"""


def test_the_collector_collects_again_after_start_up():
    assert run_python(SCRIPT).strip() == "before collected after collected"

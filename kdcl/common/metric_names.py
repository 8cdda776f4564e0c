"""Names of logged metrics: `<stage>/<split>/<metric>`, e.g. `student/val/acc` (one TensorBoard
section per stage; the checkpoint monitor, the progress lines and metrics.json read the same names)."""

from __future__ import annotations


def metric_name(stage: str, split: str, metric: str) -> str:
    """`metric_name("student", "val", "acc")` is `"student/val/acc"`."""
    return f"{stage}/{split}/{metric}"

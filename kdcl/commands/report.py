"""`kdcl report DIR [baseline=KEY=VALUE]`: compare the runs under DIR (kdcl/reporting/compare.py)."""

from __future__ import annotations

from pathlib import Path

from kdcl.common.errors import KdclError
from kdcl.reporting.compare import write_report


def report_command(rest: list[str]) -> None:
    extra = [a for a in rest[1:] if not a.startswith("baseline=")]
    if not rest or rest[0].startswith("baseline=") or extra:
        raise KdclError("report takes one directory and optionally a baseline: kdcl report "
                        "outputs/multirun/<date>/<time> [baseline=KEY=VALUE]")  # fmt: skip
    baselines = [a.split("=", 1)[1] for a in rest[1:]]
    write_report(Path(rest[0]), baselines[-1] if baselines else None)

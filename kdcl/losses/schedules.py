"""Schedules for a loss term's weight or any numeric parameter (temperature, ...) over one stage.

A schedule moves a value from `start` to the configured value over the first `until` of the stage
(`progress` = step / total steps, in [0, 1]) and keeps it there afterwards. Config form, per term:

    distill.terms.dkd.schedule.weight: {kind: linear, start: 0.0, until: 0.1}   # DKD's warm-up
    distill.terms.kd.schedule.temperature: {kind: cosine, start: 8.0}           # anneal T from 8 to 4

Adding a schedule = one function of x = min(1, progress / until) returning the share of the way done.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from kdcl.common.errors import KdclError, did_you_mean

SCHEDULES: dict[str, Callable[..., float]] = {
    "constant": lambda x: 1.0,
    "linear": lambda x: x,
    "cosine": lambda x: (1 - math.cos(math.pi * x)) / 2,
    "step": lambda x, n_steps=4: math.floor(n_steps * x) / n_steps,
}
PARAMS = {"kind", "start", "until", "n_steps"}


def scheduled(value: float, spec: Mapping | None, progress: float) -> float:
    """The value of a scheduled parameter at `progress` through the stage."""
    if not spec:
        return value
    until = spec.get("until", 1.0)
    x = min(1.0, max(0.0, progress) / until)
    kind = spec.get("kind", "linear")
    share = SCHEDULES[kind](x, int(spec.get("n_steps", 4))) if kind == "step" else SCHEDULES[kind](x)
    start = spec.get("start", 0.0)
    return start + (value - start) * share


def check_schedule(spec, key: str, value_must_be_positive: bool) -> None:
    if not isinstance(spec, Mapping):
        raise KdclError(f"{key} must be a mapping such as {{kind: linear, start: 0.0, until: 0.1}}, not {spec!r}")
    for k in spec:
        if k not in PARAMS:
            raise KdclError(
                f"{key}.{k} is not a schedule setting{did_you_mean(str(k), PARAMS)}; use {', '.join(sorted(PARAMS))}"
            )
    kind = spec.get("kind", "linear")
    if kind not in SCHEDULES:
        raise KdclError(
            f"{key}.kind '{kind}' is not a schedule{did_you_mean(str(kind), SCHEDULES)}; use {'|'.join(SCHEDULES)}"
        )
    until = spec.get("until", 1.0)
    if not isinstance(until, (int, float)) or not 0 < until <= 1:
        raise KdclError(f"{key}.until={until} must be a fraction of the stage in (0, 1]")
    start = spec.get("start", 0.0)
    if not isinstance(start, (int, float)) or start < 0 or (value_must_be_positive and start <= 0):
        bound = "> 0" if value_must_be_positive else "≥ 0"
        raise KdclError(f"{key}.start={start} must be a number {bound}")
    n_steps = spec.get("n_steps", 4)
    if not isinstance(n_steps, int) or n_steps < 1:
        raise KdclError(f"{key}.n_steps={n_steps} must be an integer ≥ 1")

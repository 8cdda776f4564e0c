"""Pacing functions: the fraction of the (difficulty-ordered) training set available at step t of T.

With x = min(1, t / (full_at·T)), each function maps x (or t) to a fraction; the result is clipped
to [start, 1]. Adding one = one function in PACING (plus a conf/curriculum/*.yaml preset).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

from kdcl.common.errors import KdclError, did_you_mean, show

# Each function: (x = progress towards full_at in [0, 1], t = step, start, **params) -> fraction.


def pace_none(x: float, t: int, start: float) -> float:
    return 1.0


def pace_linear(x: float, t: int, start: float) -> float:
    return start + (1 - start) * x


def pace_root(x: float, t: int, start: float, p: float = 2.0) -> float:
    """The competence curve of Platanios et al. 2019 (p = 2: square root)."""
    return (start**p + (1 - start**p) * x) ** (1 / p)


def pace_geometric(x: float, t: int, start: float) -> float:
    return start ** (1 - x)


def pace_step(x: float, t: int, start: float, n_steps: int = 4) -> float:
    return start + (1 - start) * math.floor(n_steps * x) / n_steps


def pace_exponential(x: float, t: int, start: float, inc: float = 1.9, step_length: int = 100) -> float:
    """Hacohen & Weinshall 2019, fixed exponential pacing: start·inc^⌊t / step_length⌋ (full_at unused)."""
    return start * inc ** math.floor(t / step_length)


PACING: dict[str, Callable[..., float]] = {
    "none": pace_none,
    "linear": pace_linear,
    "root": pace_root,
    "geometric": pace_geometric,
    "step": pace_step,
    "exponential": pace_exponential,
}


def pacing_params(name: str) -> list[str]:
    return list(inspect.signature(PACING[name]).parameters)[3:]


def fraction(name: str, step: int, total_steps: int, start: float = 0.2, full_at: float = 0.8, **params) -> float:
    """The fraction of the training set available at `step` of `total_steps`, in [start, 1]."""
    if name == "none":
        return 1.0
    x = min(1.0, step / max(1e-9, full_at * total_steps))
    return min(1.0, max(start, PACING[name](x, step, start, **params)))


def check_pacing(name, start, full_at, params: dict, key: str = "curriculum") -> None:
    """One KdclError naming the key for a bad pacing name or parameter."""
    if name not in PACING:
        raise KdclError(
            f"{key}.pacing '{name}' is not a pacing function{did_you_mean(str(name), PACING)}; use {'|'.join(PACING)}"
        )
    if not isinstance(start, (int, float)) or isinstance(start, bool) or not 0 < start <= 1:
        raise KdclError(
            f"{key}.start={show(start)} must be in (0, 1] (the fraction of the data available at the start)"
        )
    if not isinstance(full_at, (int, float)) or isinstance(full_at, bool) or not 0 < full_at <= 1:
        raise KdclError(
            f"{key}.full_at={show(full_at)} must be in (0, 1] (the point of the stage where all data is used)"
        )
    for param, value in params.items():
        if param not in pacing_params(name):
            allowed = ", ".join(pacing_params(name)) or "none"
            raise KdclError(f"{key}.params.{param} is not a parameter of '{name}' pacing (it takes: {allowed})")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise KdclError(f"{key}.params.{param}={value} must be a number")
    if name == "exponential":
        if params.get("inc", 1.9) <= 1:
            raise KdclError(f"{key}.params.inc={params['inc']} must be > 1 (the growth factor per step_length)")
        step_length = params.get("step_length", 100)
        if not isinstance(step_length, int) or step_length < 1:
            raise KdclError(f"{key}.params.step_length={step_length} must be an integer ≥ 1 (training steps)")
    if name == "root" and params.get("p", 2.0) <= 0:
        raise KdclError(f"{key}.params.p={params['p']} must be > 0")
    if name == "step" and (not isinstance(params.get("n_steps", 4), int) or params.get("n_steps", 4) < 1):
        raise KdclError(f"{key}.params.n_steps={params['n_steps']} must be an integer ≥ 1")

"""Statistics over seeds: t intervals, paired tests against a baseline, Holm's correction, and how many
seeds a difference needs. Pure functions of lists of numbers (scipy.stats does the distributions)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95  # confidence level of every interval
ALPHA = 0.05  # significance level of every test (after Holm's correction)
POWER = 0.8  # the power the seed estimate asks for
EXACT_TESTS_FROM = 6  # the sign and Wilcoxon tests are reported from this many paired seeds on
MAX_SEEDS = 1000  # beyond this the seed estimate says "more than"


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and the t interval of the mean of `n` values."""

    n: int
    mean: float
    std: float
    low: float
    high: float


def t_interval(values: list[float] | np.ndarray, level: float = LEVEL) -> Spread:
    """The mean with its two-sided t interval (NaN bounds for fewer than two values)."""
    x = np.asarray(values, dtype=float)
    n, mean = len(x), float(x.mean()) if len(x) else math.nan
    if n < 2:
        return Spread(n, mean, 0.0 if n else math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return Spread(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class Paired:
    """A setting against the baseline on the seeds both ran: the difference (setting − baseline) with its
    t interval and the paired tests' p-values; `sign_p`/`wilcoxon_p` only from EXACT_TESTS_FROM seeds."""

    seeds: list[int]
    diff: Spread
    t_p: float
    sign_p: float | None
    wilcoxon_p: float | None
    seeds_needed: int | None  # None: no difference to detect (or more than MAX_SEEDS)


def paired(setting: dict[int, float], baseline: dict[int, float]) -> Paired:
    """Paired by seed: only seeds present in both count."""
    seeds = sorted(set(setting) & set(baseline))
    a = np.array([setting[s] for s in seeds], dtype=float)
    b = np.array([baseline[s] for s in seeds], dtype=float)
    d = a - b
    t_p = float(stats.ttest_rel(a, b).pvalue) if len(seeds) >= 2 else math.nan
    sign_p = wilcoxon_p = None
    if len(seeds) >= EXACT_TESTS_FROM:
        nonzero = d[d != 0]
        sign_p = float(stats.binomtest(int((nonzero > 0).sum()), len(nonzero)).pvalue) if len(nonzero) else 1.0
        wilcoxon_p = float(stats.wilcoxon(a, b).pvalue) if len(nonzero) else 1.0
    return Paired(seeds, t_interval(d), t_p, sign_p, wilcoxon_p, seeds_needed(d))


def paired_t_power(effect: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test with `n` pairs at standardised effect mean/sd (noncentral t)."""
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    shift = effect * math.sqrt(n)
    return float(stats.nct.sf(crit, df, shift) + stats.nct.cdf(-crit, df, shift))


def seeds_needed(diffs: np.ndarray, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """The fewest paired seeds at which a paired t-test would detect the observed mean difference with
    the given power, taking the observed spread of the differences as the truth (a planning estimate)."""
    if len(diffs) < 2 or float(np.mean(diffs)) == 0.0:
        return None
    sd = float(np.std(diffs, ddof=1))
    if sd == 0.0:
        return 2  # every seed moved by the same amount: two seeds already show it
    effect = abs(float(np.mean(diffs))) / sd
    for n in range(2, MAX_SEEDS + 1):
        if paired_t_power(effect, n, alpha) >= power:
            return n
    return None


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count). Written here because
    scipy has no Holm correction and statsmodels is not a dependency (it is ten lines)."""
    real = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m, adjusted, running = len(real), [math.nan] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(real):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted

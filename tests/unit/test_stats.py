"""kdcl.reporting.stats against scipy computed by hand (and Holm against its definition)."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from kdcl.reporting.stats import holm, paired, paired_t_power, seeds_needed, t_interval


def test_t_interval_is_scipys_interval_of_the_mean():
    x = [0.71, 0.74, 0.76, 0.73]
    s = t_interval(x)
    low, high = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert (s.n, s.mean, s.std) == (4, pytest.approx(np.mean(x)), pytest.approx(np.std(x, ddof=1)))
    assert (s.low, s.high) == (pytest.approx(low), pytest.approx(high))
    one = t_interval([0.5])
    assert one.mean == 0.5 and math.isnan(one.low)


def test_paired_tests_match_scipy_and_use_only_shared_seeds():
    a = {0: 0.80, 1: 0.83, 2: 0.79, 3: 0.85, 4: 0.82, 5: 0.84, 9: 0.99}  # seed 9: no partner, left out
    b = {0: 0.78, 1: 0.80, 2: 0.80, 3: 0.81, 4: 0.79, 5: 0.80, 7: 0.10}
    r = paired(a, b)
    xa, xb = np.array([a[s] for s in range(6)]), np.array([b[s] for s in range(6)])
    assert r.seeds == [0, 1, 2, 3, 4, 5]
    assert r.t_p == pytest.approx(sps.ttest_rel(xa, xb).pvalue)
    assert r.diff.mean == pytest.approx(np.mean(xa - xb))
    low, high = sps.t.interval(0.95, 5, loc=np.mean(xa - xb), scale=sps.sem(xa - xb))
    assert (r.diff.low, r.diff.high) == (pytest.approx(low), pytest.approx(high))
    assert r.sign_p == pytest.approx(sps.binomtest(5, 6).pvalue)  # five of six seeds improved
    assert r.wilcoxon_p == pytest.approx(sps.wilcoxon(xa, xb).pvalue)
    three = paired({0: 0.8, 1: 0.9, 2: 0.7}, {0: 0.7, 1: 0.8, 2: 0.7})
    assert three.sign_p is None and three.wilcoxon_p is None  # exact tests only from six seeds


def test_holm_step_down_by_definition():
    p = [0.01, 0.04, 0.03, math.nan, 0.2]
    # sorted 0.01, 0.03, 0.04, 0.2 with m = 4: 4·0.01, max(·, 3·0.03), max(·, 2·0.04), max(·, 1·0.2)
    expected = [0.04, 0.09, 0.09, math.nan, 0.2]
    got = holm(p)
    assert [round(x, 12) if not math.isnan(x) else "nan" for x in got] == [
        round(x, 12) if not math.isnan(x) else "nan" for x in expected
    ]


def test_seeds_needed_is_the_first_n_with_80_percent_power():
    diffs = np.array([0.01, 0.03, -0.005, 0.02])
    n = seeds_needed(diffs)
    effect = np.mean(diffs) / np.std(diffs, ddof=1)
    assert paired_t_power(effect, n) >= 0.8 > paired_t_power(effect, n - 1)
    assert seeds_needed(np.array([0.02, 0.02, 0.02])) == 2  # no spread: two seeds show it
    assert seeds_needed(np.array([0.01, -0.01])) is None  # no difference to detect

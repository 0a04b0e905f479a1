"""report/stats.py: intervals and Welch p-values against t quantiles and tails known without scipy.

The closed forms for 1, 2 and 4 degrees of freedom are exact (Student's t has elementary CDFs and
quantiles there); the other quantiles are the 3-decimal values printed in any t table.
"""
from __future__ import annotations

import math

import pytest

from cifarlab.report.stats import intervals_overlap, summarize, welch_t_test

_A = 4 * 0.975 * 0.025  # alpha = 4p(1 - p) of the df=4 quantile formula
T975 = {1: (math.tan(0.475 * math.pi), 1e-12),  # Cauchy: tan(pi (p - 1/2))
        2: (0.95 / math.sqrt(2 * 0.975 * 0.025), 1e-12),  # (2p - 1) / sqrt(2p(1 - p))
        4: (2 * math.sqrt(math.cos(math.acos(math.sqrt(_A)) / 3) / math.sqrt(_A) - 1), 1e-12),
        3: (3.182, 2e-4), 5: (2.571, 2e-4), 10: (2.228, 3e-4), 30: (2.042, 3e-4)}


def test_summary_mean_std_and_t_interval():
    s = summarize([0.70, 0.72, 0.74])
    assert (s.n, s.mean, s.std) == (3, pytest.approx(0.72), pytest.approx(0.02))
    half = T975[2][0] * 0.02 / math.sqrt(3)  # t(0.975, df=2) * s / sqrt(n)
    assert (s.lo, s.hi) == (pytest.approx(0.72 - half), pytest.approx(0.72 + half))


@pytest.mark.parametrize("df", sorted(T975))
def test_interval_half_width_is_the_t_quantile_times_the_standard_error(df):
    s = summarize(range(df + 1))
    q, rel = T975[df]
    assert (s.hi - s.mean) / (s.std / math.sqrt(s.n)) == pytest.approx(q, rel=rel)
    assert s.mean - s.lo == pytest.approx(s.hi - s.mean)


def test_summary_of_one_value_has_no_spread():
    s = summarize([0.5])
    assert s.n == 1 and s.mean == 0.5 and math.isnan(s.std) and math.isnan(s.lo) and not s.has_spread


def _tail_df4(t: float) -> float:
    # df=4: F(t) = 1/2 + 3/8 u (1 - t^2 / (12 (1 + t^2/4))), u = t / sqrt(1 + t^2/4)
    u = t / math.sqrt(1 + t * t / 4)
    return 2 * (0.5 - 3 / 8 * u * (1 - t * t / (12 * (1 + t * t / 4))))


@pytest.mark.parametrize("a, b, t, df, p", [
    # se^2 = 1 + 0 -> t = -4, df = 1 (Cauchy): P(|T| >= t) = 1 - 2 atan(t) / pi
    ([0, 2], [5, 5], -4.0, 1.0, 1 - 2 * math.atan(4) / math.pi),
    # se^2 = 1 + 1 -> t = -3 / sqrt(2), df = 2: P(|T| >= t) = 1 - t / sqrt(2 + t^2)
    ([0, 2], [3, 5], -3 / math.sqrt(2), 2.0, 1 - (3 / math.sqrt(2)) / math.sqrt(2 + 4.5)),
    # variances 1 and 1, n=3 each -> t = -3 / sqrt(2/3), df = 4 (p = 0.0213116)
    ([1, 2, 3], [4, 5, 6], -3 / math.sqrt(2 / 3), 4.0, _tail_df4(3 / math.sqrt(2 / 3))),
])
def test_welch_matches_closed_form_tails(a, b, t, df, p):
    r = welch_t_test(a, b)
    assert (r.t, r.df) == (pytest.approx(t), pytest.approx(df))
    assert r.p == pytest.approx(p, rel=1e-10)


def test_welch_unequal_variances_and_sizes():
    # a: mean 12, var 4, n 3; b: mean 25, var 50, n 2 -> se^2 = 4/3 + 25, df = se^4 / ((4/3)^2/2 + 25^2/1)
    r = welch_t_test([10, 12, 14], [20, 30])
    se2 = 4 / 3 + 25
    assert r.diff == -13 and r.t == pytest.approx(-13 / math.sqrt(se2))
    assert r.df == pytest.approx(se2 ** 2 / ((4 / 3) ** 2 / 2 + 25 ** 2))
    assert 0.05 < r.p < 0.5


def test_welch_needs_two_values_per_side():
    assert welch_t_test([0.7], [0.6, 0.65]) is None
    assert welch_t_test([0.7, 0.7], [0.7, 0.7]).p == 1.0
    assert welch_t_test([0.7, 0.7], [0.6, 0.6]).p == 0.0


def test_interval_overlap():
    assert intervals_overlap(summarize([1, 2, 3]), summarize([2, 3, 4])) is True
    assert intervals_overlap(summarize([1.0, 1.1, 1.2]), summarize([5.0, 5.1, 5.2])) is False
    assert intervals_overlap(summarize([1]), summarize([2, 3])) is None

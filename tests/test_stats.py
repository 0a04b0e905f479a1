"""report/stats.py's hand-written Student-t functions against scipy.stats on fixed inputs.

Written before replacing them with scipy.stats: the report's intervals and p-values must not move.
"""
from __future__ import annotations

import pytest
from scipy import stats as sp

from cifarlab.report.stats import summarize, t_ppf, t_sf2, welch_t_test

DFS = (1, 2, 3, 4, 5, 7, 10, 30, 2.5, 3.7)  # Welch degrees of freedom are not integers
SAMPLES = (([0.70, 0.72, 0.74], [0.76, 0.77, 0.78]), ([10, 12, 14], [20, 30]), ([1, 2, 3], [4, 5, 6]),
           ([0.612, 0.655, 0.601, 0.634, 0.640], [0.598, 0.603, 0.611]))


@pytest.mark.parametrize("df", DFS)
@pytest.mark.parametrize("q", (0.6, 0.9, 0.975, 0.995, 0.025))
def test_t_quantile_matches_scipy(q, df):
    assert t_ppf(q, df) == pytest.approx(sp.t.ppf(q, df), rel=1e-10)


@pytest.mark.parametrize("df", DFS)
@pytest.mark.parametrize("t", (0.1, 1.0, 2.5, 8.0))
def test_two_sided_tail_matches_scipy(t, df):
    assert t_sf2(t, df) == pytest.approx(2 * sp.t.sf(t, df), rel=1e-9)


@pytest.mark.parametrize("a, b", SAMPLES)
def test_welch_matches_scipy(a, b):
    ours, theirs = welch_t_test(a, b), sp.ttest_ind(a, b, equal_var=False)
    assert ours.t == pytest.approx(theirs.statistic, rel=1e-12)
    assert ours.df == pytest.approx(theirs.df, rel=1e-12)
    assert ours.p == pytest.approx(theirs.pvalue, rel=1e-9)


@pytest.mark.parametrize("values", [a for pair in SAMPLES for a in pair])
def test_interval_matches_scipy(values):
    s = summarize(values)
    lo, hi = sp.t.interval(0.95, len(values) - 1, loc=s.mean, scale=sp.sem(values))
    assert (s.lo, s.hi) == (pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12))

"""Seed statistics: mean +/- std, t-based 95% intervals and Welch's t-test (Student's t from scipy.stats)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy.stats import t as student_t


@dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof=1) and the 95% t-interval of the mean of n values; std/interval NaN when n < 2."""

    n: int
    mean: float
    std: float
    lo: float
    hi: float

    @property
    def has_spread(self) -> bool:
        return self.n >= 2


@dataclass(frozen=True)
class WelchResult:
    """Welch's unequal-variance t-test of mean(a) - mean(b): statistic, degrees of freedom, two-sided p."""

    diff: float
    t: float
    df: float
    p: float


def summarize(values: Sequence[float], level: float = 0.95) -> Summary:
    """Mean, sample std and the t-based `level` interval of the mean."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = math.fsum(xs) / n
    if n < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(student_t.ppf(0.5 + level / 2.0, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> WelchResult | None:
    """Welch's t-test of mean(a) - mean(b), two-sided; None when either side has fewer than 2 values."""
    sa, sb = summarize(a), summarize(b)
    if sa.n < 2 or sb.n < 2:
        return None
    diff = sa.mean - sb.mean
    va, vb = sa.std ** 2 / sa.n, sb.std ** 2 / sb.n  # squared standard errors
    se2 = va + vb
    if se2 == 0.0:  # no spread on either side: any difference is exact, no difference is no evidence
        return WelchResult(diff, math.copysign(math.inf, diff) if diff else 0.0, float(sa.n + sb.n - 2),
                           0.0 if diff else 1.0)
    t = diff / math.sqrt(se2)
    df = se2 ** 2 / (va ** 2 / (sa.n - 1) + vb ** 2 / (sb.n - 1))  # Welch-Satterthwaite
    return WelchResult(diff, t, df, 2.0 * float(student_t.sf(abs(t), df)))  # two-sided


def intervals_overlap(a: Summary, b: Summary) -> bool | None:
    """Whether two 95% intervals overlap; None when either is undefined (n < 2)."""
    if not (a.has_spread and b.has_spread):
        return None
    return a.lo <= b.hi and b.lo <= a.hi

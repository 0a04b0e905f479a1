"""Seed statistics: mean +/- std, t-based 95% intervals and Welch's t-test, in plain numpy/math.

Student's t distribution is computed from the regularised incomplete beta function (continued
fraction, Numerical Recipes 6.4), which is accurate to ~1e-12 for the degrees of freedom seen here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


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


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_sf2(t: float, df: float) -> float:
    """Two-sided tail probability P(|T| >= |t|) of Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    half = 0.5 * t_sf2(t, df)
    return 1.0 - half if t >= 0 else half


def t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t (inverse of `t_cdf`) by bisection; q in (0, 1)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:  # df >= 1 at q = 0.999 needs hi ~ 318; doubling gets there quickly
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def summarize(values: Sequence[float], level: float = 0.95) -> Summary:
    """Mean, sample std and the t-based `level` interval of the mean."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan)
    mean = math.fsum(xs) / n
    if n < 2:
        nan = float("nan")
        return Summary(1, mean, nan, nan, nan)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_ppf(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
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
    return WelchResult(diff, t, df, t_sf2(t, df))


def intervals_overlap(a: Summary, b: Summary) -> bool | None:
    """Whether two 95% intervals overlap; None when either is undefined (n < 2)."""
    if not (a.has_spread and b.has_spread):
        return None
    return a.lo <= b.hi and b.lo <= a.hi

"""Statistics over seeds: is a difference between two settings larger than the seeds' noise?

A run's test error is one draw: the init seed alone moves it by several misses. So a setting
is compared with another over many seeds, each seed trained under both (paired by `seed` and
`data.seed`), and the answer is a difference with an interval:

    paired_difference   the mean of per-seed differences, with a 95% Student t interval
    mcnemar             an exact test on per-digit correctness: of the digits that one run gets
                        right and the other wrong, are the two kinds equally common?
    binomial_se         the standard error of an error rate measured on n digits
    percentile_of       where a value falls within a sample of values (e.g. 102 misses)
    best_of_n           the expected minimum of n values drawn from a sample (selection by the test set)

numpy and the standard library only: the t quantile comes from the regularized incomplete
beta function, the binomial tail from exact integer arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95  # the interval's coverage


@dataclass(frozen=True)
class Difference:
    """mean(a - b) over n pairs, with its interval [low, high] at `level`."""

    mean: float
    low: float
    high: float
    n: int
    sd: float  # of the per-pair differences
    level: float = LEVEL

    @property
    def decided(self) -> bool:
        """The interval excludes 0: the sign of the difference is settled at this level."""
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class McNemar:
    """Discordant digits: `a_only` right under a and wrong under b, `b_only` the reverse; `p` two-sided."""

    a_only: int
    b_only: int
    p: float


def _vector(name: str, values) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: not all finite; give finite numbers (a diverged run has no figures)")
    return x


def paired_difference(a, b, level: float = LEVEL) -> Difference:
    """mean(a_i - b_i) with a Student t interval on n - 1 degrees of freedom; a_i and b_i are
    the same seed under two settings."""
    a, b = _vector("a", a), _vector("b", b)
    if a.shape != b.shape:
        raise ValueError(f"b: {len(b)} values is not allowed; give one per value of a ({len(a)}), paired by seed")
    if len(a) < 2:
        raise ValueError(f"a: {len(a)} pair(s) is not allowed; an interval needs 2 or more")
    if not 0 < level < 1:
        raise ValueError(f"level: {level!r} is not allowed; give a coverage in (0, 1), e.g. 0.95")
    d = a - b
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = t_quantile(0.5 + level / 2, len(d) - 1) * sd / math.sqrt(len(d))
    return Difference(mean=mean, low=mean - half, high=mean + half, n=len(d), sd=sd, level=level)


def mcnemar(a_correct, b_correct) -> McNemar:
    """Exact McNemar test on per-digit correctness (any shape; arrays over several seeds are
    pooled): under the null each discordant digit is a fair coin, so the p-value is the
    two-sided binomial tail of the smaller count, min(1, 2 P(X <= min(a_only, b_only)))."""
    a = np.asarray(a_correct)
    b = np.asarray(b_correct)
    if a.dtype != bool or b.dtype != bool:
        raise ValueError("a_correct: give boolean arrays (True where the digit is classified right)")
    if a.shape != b.shape:
        raise ValueError(f"b_correct: shape {b.shape} is not allowed; give a_correct's shape {a.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    n, k = a_only + b_only, min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    p = min(1.0, 2 * tail / 2**n)  # exact integers; the division rounds once
    return McNemar(a_only=a_only, b_only=b_only, p=p)


def binomial_se(rate: float, n: int) -> float:
    """sqrt(rate (1 - rate) / n): the standard error of an error rate (a fraction) on n digits."""
    if not 0 <= rate <= 1:
        raise ValueError(f"rate: {rate!r} is not allowed; give a fraction in [0, 1] (5% is 0.05)")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: {n!r} is not allowed; give a count of 1 or more")
    return math.sqrt(rate * (1 - rate) / n)


def percentile_of(value: float, sample) -> float:
    """The percentage of `sample` below `value`, ties counting half (scipy's kind='mean')."""
    x = _vector("sample", sample)
    if len(x) == 0:
        raise ValueError("sample: empty; give one value or more")
    below, equal = int((x < value).sum()), int((x == value).sum())
    return 100.0 * (below + 0.5 * equal) / len(x)


def best_of_n(sample, n: int) -> float:
    """The expected minimum of n values drawn without replacement from `sample`: what picking the
    best of n seeds by the test set gives. With the sample sorted, x_(i) is the minimum of a draw
    with probability C(M - i, n - 1) / C(M, n)."""
    x = np.sort(_vector("sample", sample))
    m = len(x)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= m:
        raise ValueError(f"n: {n!r} is not allowed; give a count from 1 to the sample's size ({m})")
    total = math.comb(m, n)
    return float(sum(x[i - 1] * math.comb(m - i, n - 1) for i in range(1, m - n + 2)) / total)


# --- the Student t quantile --------------------------------------------------------------------


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with df degrees of freedom (bisection on the cdf)."""
    if not 0 < p < 1:
        raise ValueError(f"p: {p!r} is not allowed; give a probability in (0, 1)")
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df: {df!r} is not allowed; give an integer of 1 or more")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
        if high - low < 1e-13 * max(1.0, high):
            break
    return (low + high) / 2


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) = 1 - I_x(df/2, 1/2) / 2 for t >= 0, with x = df / (df + t^2)."""
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t >= 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1 - front * _beta_fraction(b, a, 1 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), evaluated by Lentz's method."""
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for aa in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + aa * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h

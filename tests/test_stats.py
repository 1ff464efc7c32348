"""zipnet.stats against independent expectations: scipy.stats where it is installed, small
cases worked by hand, and brute force over every draw."""

import itertools
import math

import numpy as np
import pytest

from zipnet import stats

scipy_stats = pytest.importorskip("scipy.stats", reason="scipy gives the independent reference values")


@pytest.mark.parametrize("df", [1, 2, 4, 19, 49, 200])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995, 0.025])
def test_t_quantile_matches_scipy(p, df):
    assert stats.t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9, abs=1e-12)


def test_t_quantile_known_values():
    # t_{0.975} on 1 df is tan(0.475 pi) = 12.706; on 19 df the tables give 2.093
    assert stats.t_quantile(0.975, 1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-9)
    assert stats.t_quantile(0.975, 19) == pytest.approx(2.093, abs=5e-4)


def test_paired_difference_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, half width t_{0.975, 2} / sqrt(3) = 4.302653 / 1.732051
    d = stats.paired_difference([3, 5, 7], [2, 3, 4])
    half = 4.302652729749464 / math.sqrt(3)
    assert (d.mean, d.sd, d.n) == (2.0, 1.0, 3)
    assert d.low == pytest.approx(2 - half, rel=1e-9) and d.high == pytest.approx(2 + half, rel=1e-9)
    assert not d.decided  # [-0.48, 4.48] holds 0


def test_paired_difference_matches_scipy_ttest():
    rng = np.random.default_rng(23)
    a = rng.normal(110, 8, size=20)
    b = a - rng.normal(3, 4, size=20)
    d = stats.paired_difference(a, b)
    ref = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (d.low, d.high) == pytest.approx((ref.low, ref.high), rel=1e-9)
    assert d.decided == (ref.low > 0 or ref.high < 0)


def test_paired_difference_within_noise_is_not_decided():
    d = stats.paired_difference([100, 104, 98, 103], [101, 102, 100, 101])
    assert d.low < 0 < d.high and not d.decided


@pytest.mark.parametrize(
    "a, b, message",
    [([1, 2, 3], [1, 2], "b: 2 values"), ([1], [2], "a: 1 pair"), ([1, float("nan")], [1, 2], "a: not all finite")],
)
def test_paired_difference_refuses_bad_input(a, b, message):
    with pytest.raises(ValueError, match=message):
        stats.paired_difference(a, b)


def test_mcnemar_by_hand():
    # 1 digit right only under a, 4 only under b: p = 2 (C(5,0) + C(5,1)) / 2^5 = 12/32
    a = np.array([True, False, False, False, False, True, True, False])
    b = np.array([False, True, True, True, True, True, True, False])
    m = stats.mcnemar(a, b)
    assert (m.a_only, m.b_only) == (1, 4)
    assert m.p == 12 / 32


@pytest.mark.parametrize("a_only, b_only", [(0, 0), (3, 3), (0, 9), (40, 61), (220, 260), (7, 1)])
def test_mcnemar_matches_scipy_binomtest(a_only, b_only):
    # build correctness vectors with the given discordant counts and 50 digits both get right
    a = np.array([True] * a_only + [False] * b_only + [True] * 50)
    b = np.array([False] * a_only + [True] * b_only + [True] * 50)
    m = stats.mcnemar(a, b)
    n = a_only + b_only
    expected = 1.0 if n == 0 else scipy_stats.binomtest(a_only, n, 0.5).pvalue
    assert m.p == pytest.approx(expected, rel=1e-12)


def test_mcnemar_pools_seeds_and_refuses_bad_shapes():
    a = np.array([[True, False], [True, True]])
    b = np.array([[False, False], [False, True]])
    assert stats.mcnemar(a, b).a_only == 2
    with pytest.raises(ValueError, match="b_correct: shape"):
        stats.mcnemar(a, b[0])
    with pytest.raises(ValueError, match="a_correct: give boolean"):
        stats.mcnemar(a.astype(int), b)


def test_binomial_se_of_the_papers_test_error():
    # 5% on 2,007 digits: 0.49 points, about 10 misses
    se = stats.binomial_se(0.05, 2007)
    assert se == pytest.approx(math.sqrt(0.05 * 0.95 / 2007))
    assert 100 * se == pytest.approx(0.4865, abs=1e-4)
    assert 2007 * se == pytest.approx(9.76, abs=0.01)
    with pytest.raises(ValueError, match="rate: 5"):
        stats.binomial_se(5, 2007)
    with pytest.raises(ValueError, match="n: 0"):
        stats.binomial_se(0.05, 0)


@pytest.mark.parametrize("value", [102, 100, 90, 130, 108.5])
def test_percentile_of_matches_scipy(value):
    sample = [100, 102, 102, 104, 108, 110, 111, 111, 115, 120]
    expected = scipy_stats.percentileofscore(sample, value, kind="mean")
    assert stats.percentile_of(value, sample) == pytest.approx(expected)


def test_percentile_of_by_hand():
    assert stats.percentile_of(102, [100, 102, 104, 106]) == 37.5  # one below, one tie (half)
    with pytest.raises(ValueError, match="sample: empty"):
        stats.percentile_of(1, [])


def test_best_of_n_against_every_draw():
    sample = [112, 104, 119, 104, 108, 125, 101]
    for n in range(1, len(sample) + 1):
        draws = list(itertools.combinations(sample, n))
        expected = sum(min(d) for d in draws) / len(draws)
        assert stats.best_of_n(sample, n) == pytest.approx(expected, rel=1e-12)


def test_best_of_n_by_hand_and_bounds():
    assert stats.best_of_n([1, 2, 3], 2) == pytest.approx(4 / 3)  # minima 1, 1, 2
    assert stats.best_of_n([5, 3, 9], 1) == pytest.approx(17 / 3)  # the mean
    assert stats.best_of_n([5, 3, 9], 3) == 3  # all of them: the minimum
    with pytest.raises(ValueError, match="n: 4"):
        stats.best_of_n([5, 3, 9], 4)

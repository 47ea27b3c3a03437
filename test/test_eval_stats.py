"""Wilson intervals and the exact McNemar test against values computed by hand."""

import math

import numpy as np
import pytest

from quantvla_ros.workflows.eval_stats import (
    Z95,
    McNemarResult,
    binomial_two_sided_half,
    mcnemar_exact,
    mcnemar_from_counts,
    paired_difference_interval,
    wilson_interval,
)


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    # z = 1.959964: 0/10 -> upper z^2 / (n + z^2); 5/10 and 8/10 as in Brown, Cai & DasGupta.
    (0, 10, 0.0, 0.277533),
    (10, 10, 0.722467, 1.0),
    (5, 10, 0.236593, 0.763407),
    (8, 10, 0.490163, 0.943317),
    (1, 1, 0.206549, 1.0),
    (350, 500, 0.658432, 0.738518),  # roots of (p_hat - p)^2 = z^2 p (1 - p) / n
])
def test_wilson_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-6)
    assert hi == pytest.approx(high, abs=1e-6)


def test_wilson_upper_end_formula_and_symmetry():
    z2 = 1.959963984540054 ** 2
    assert wilson_interval(0, 50)[1] == pytest.approx(z2 / (50 + z2), rel=1e-12)
    for k in range(0, 21):
        lo, hi = wilson_interval(k, 20)
        mlo, mhi = wilson_interval(20 - k, 20)
        assert lo == pytest.approx(1 - mhi, abs=1e-12) and hi == pytest.approx(1 - mlo, abs=1e-12)
        assert 0.0 <= lo <= k / 20 <= hi <= 1.0


@pytest.mark.parametrize(("k", "n"), [(1, 0), (-1, 5), (6, 5)])
def test_wilson_rejects_bad_counts(k, n):
    with pytest.raises(ValueError):
        wilson_interval(k, n)


@pytest.mark.parametrize(("a_only", "b_only", "p"), [
    (0, 0, 1.0),
    (0, 5, 0.0625),                 # 2 / 2^5
    (1, 9, 22 / 1024),              # 2 * (1 + 10) / 2^10
    (3, 3, 1.0),                    # capped at 1
    (2, 8, 2 * (1 + 10 + 45) / 1024),
    (0, 1, 1.0),
    (20, 5, 2 * sum(math.comb(25, i) for i in range(6)) / 2**25),
])
def test_mcnemar_known_values(a_only, b_only, p):
    assert mcnemar_from_counts(a_only, b_only).p_value == pytest.approx(p, rel=1e-12)
    assert binomial_two_sided_half(b_only, a_only + b_only) == pytest.approx(p, rel=1e-12)


def test_mcnemar_from_paired_outcomes():
    a = [1, 1, 1, 0, 0, 1, 1, 0, 1, 1]
    b = [1, 0, 0, 0, 1, 0, 1, 0, 0, 0]
    result = mcnemar_exact(a, b)
    assert result == McNemarResult(n=10, a_only=5, b_only=1, p_value=2 * (1 + 6) / 64)
    assert result.difference == pytest.approx(0.4)
    assert mcnemar_exact(b, a).p_value == result.p_value
    assert mcnemar_exact(b, a).difference == pytest.approx(-0.4)


def test_mcnemar_rejects_unpaired_and_large_n_is_exact():
    with pytest.raises(ValueError):
        mcnemar_exact([1, 0], [1])
    with pytest.raises(ValueError):
        mcnemar_from_counts(3, 4, n=5)
    # 1000 discordant pairs split 500/500 -> p = 1; 400/600 -> tiny but positive and finite.
    assert mcnemar_from_counts(500, 500).p_value == 1.0
    p = mcnemar_from_counts(400, 600).p_value
    assert 0.0 < p < 1e-9


def test_paired_difference_interval_reduces_and_agrees_with_wald_at_large_n():
    # Uncorrelated outcomes (both * neither == a_only * b_only, phi = 0): each end combines
    # the two Wilson half-widths in quadrature (Newcombe's method for independent samples).
    low, high = paired_difference_interval(3, 3, 3, 3)
    w_low, w_high = wilson_interval(6, 12)
    half = math.hypot(0.5 - w_low, w_high - 0.5)
    assert low == pytest.approx(-half, abs=1e-12) and high == pytest.approx(half, abs=1e-12)
    # At n = 40000 the score interval meets the Wald interval of the paired difference.
    both, a_only, b_only, neither = 20000, 6000, 4000, 10000
    n = both + a_only + b_only + neither
    diff = (a_only - b_only) / n
    se = math.sqrt((a_only + b_only) / n - diff**2) / math.sqrt(n)
    low, high = paired_difference_interval(both, a_only, b_only, neither)
    assert low == pytest.approx(diff - Z95 * se, abs=1e-3)
    assert high == pytest.approx(diff + Z95 * se, abs=1e-3)


def test_paired_difference_interval_covers_about_95_percent():
    """Monte Carlo: 200 pairs with 25% discordance and a 6-point true difference."""
    rng = np.random.default_rng(0)
    cells = np.array([0.55, 0.155, 0.095, 0.20])  # both, a only, b only, neither
    truth = cells[1] - cells[2]
    draws = rng.multinomial(200, cells, size=3000)
    covered = 0
    for both, a_only, b_only, neither in draws:
        low, high = paired_difference_interval(int(both), int(a_only), int(b_only),
                                               int(neither))
        covered += low <= truth <= high
    assert 0.93 <= covered / len(draws) <= 0.97


def test_paired_difference_interval_rejects_bad_counts():
    with pytest.raises(ValueError, match="non-negative"):
        paired_difference_interval(1, -1, 0, 0)
    with pytest.raises(ValueError, match="positive total"):
        paired_difference_interval(0, 0, 0, 0)

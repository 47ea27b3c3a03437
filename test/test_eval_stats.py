"""Wilson intervals and the exact McNemar test against values computed by hand."""

import math

import pytest

from quantvla_ros.workflows.eval_stats import (
    McNemarResult,
    binomial_two_sided_half,
    mcnemar_exact,
    mcnemar_from_counts,
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

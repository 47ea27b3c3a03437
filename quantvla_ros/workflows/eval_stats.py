"""Statistics of closed-loop evaluation: success intervals and paired policy comparisons.

Standard library and numpy only. ``wilson_interval`` is the Wilson score interval for a
binomial proportion (Wilson 1927; the interval recommended by Brown, Cai and DasGupta 2001 for
small n). ``mcnemar_exact`` compares two policies run on the same episodes: only the
discordant pairs carry information, and under the null hypothesis each of them favours
either policy with probability 1/2, so the two-sided p-value is twice the binomial tail of the
smaller count (capped at 1), computed exactly in integers.
"""

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Return the Wilson score interval (low, high) for ``successes`` out of ``n``."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n))
    low, high = centre - half, centre + half
    # Exact ends at k = 0 and k = n (the formula gives them up to rounding).
    return (0.0 if successes == 0 else max(0.0, low),
            1.0 if successes == n else min(1.0, high))


def binomial_two_sided_half(k: int, n: int) -> float:
    """Return the exact two-sided p-value of ``k`` out of ``n`` under Binomial(n, 1/2)."""
    if n == 0:
        return 1.0
    lo = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(lo + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


@dataclass(frozen=True)
class McNemarResult:
    """A paired comparison of policy A against policy B on the same episodes."""

    n: int              # paired episodes
    a_only: int         # episodes A solved and B did not
    b_only: int         # episodes B solved and A did not
    p_value: float      # exact two-sided McNemar (binomial on the discordant pairs)

    @property
    def difference(self) -> float:
        """Return success rate of A minus that of B."""
        return (self.a_only - self.b_only) / self.n if self.n else 0.0


def mcnemar_exact(a_success, b_success) -> McNemarResult:
    """Compare paired outcomes (booleans per episode, same order for both policies)."""
    a = np.asarray(a_success, dtype=bool).reshape(-1)
    b = np.asarray(b_success, dtype=bool).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes differ in length: {a.size} vs {b.size}")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    return McNemarResult(int(a.size), a_only, b_only,
                         binomial_two_sided_half(a_only, a_only + b_only))


def mcnemar_from_counts(a_only: int, b_only: int, n: int | None = None) -> McNemarResult:
    """Return the exact McNemar test from the two discordant counts."""
    if a_only < 0 or b_only < 0:
        raise ValueError("discordant counts must be non-negative")
    total = a_only + b_only if n is None else int(n)
    if total < a_only + b_only:
        raise ValueError(f"n={total} is less than the discordant pairs")
    return McNemarResult(total, a_only, b_only, binomial_two_sided_half(a_only, a_only + b_only))


def paired_difference_interval(both: int, a_only: int, b_only: int, neither: int,
                               z: float = Z95) -> tuple[float, float]:
    """Return the 95% interval of rate(A) - rate(B) from paired outcomes.

    Newcombe's hybrid score interval for paired proportions (Stat. Med. 1998, method 10): the
    two Wilson intervals combined with the correlation phi of the 2x2 table, so it stays in
    [-1, 1] and behaves at small discordant counts where the Wald interval does not.
    """
    counts = (both, a_only, b_only, neither)
    if min(counts) < 0 or sum(counts) == 0:
        raise ValueError(f"paired counts must be non-negative with a positive total: {counts}")
    n = sum(counts)
    p1, p2 = (both + a_only) / n, (both + b_only) / n
    l1, u1 = wilson_interval(both + a_only, n, z)
    l2, u2 = wilson_interval(both + b_only, n, z)
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    phi = (both * neither - a_only * b_only) / math.sqrt(margins) if margins else 0.0
    low = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    diff = p1 - p2
    return max(-1.0, diff - low), min(1.0, diff + high)

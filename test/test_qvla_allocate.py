"""QVLA's allocator: one option per unit within a byte budget, least summed cost."""

import itertools
import random

import pytest

from quantvla_ros.quant.allocate import Option, solve_dp, solve_greedy, totals


def _instance(seed: int, units: int = 30, mixes: int = 0) -> list[list[Option]]:
    rng = random.Random(seed)
    items = []
    for _ in range(units):
        n = rng.randint(1_000, 100_000)
        e4 = rng.random()
        e8 = e4 * rng.random() * 0.3
        opts = [Option("bf16", 4 * n, 0.0), Option("w8a8", 2 * n + 40, e8),
                Option("w4a8", n + 80, e4)]
        for k in range(1, mixes + 1):  # row-block mixes between W4A8 and W8A8
            f = k / (mixes + 1)
            opts.append(Option(f"mix{k}", int(n + 80 + f * (n - 40)), e4 - (e4 - e8) * f ** 0.5))
        items.append(opts)
    return items


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("frac", [0.02, 0.1, 0.3, 0.7, 1.0])
def test_dp_spends_the_budget(seed, frac):
    """The exact solver's choice fits the budget and uses at least 99% of it."""
    items = _instance(seed, mixes=3)
    floor = sum(min(o.bytes for o in opts) for opts in items)
    top = sum(max(o.bytes for o in opts) for opts in items)
    budget = int(floor + frac * (top - floor))
    used, cost = totals(items, solve_dp(items, budget))
    assert 0.99 * budget <= used <= budget
    g_used, g_cost = totals(items, solve_greedy(items, budget))
    assert g_used <= budget
    assert cost <= g_cost * (1 + 1e-9) + 1e-15  # the exact solver is never worse


def test_dp_is_optimal_by_enumeration():
    """On a small instance the DP equals the best of every feasible combination."""
    items = _instance(7, units=6, mixes=1)
    floor = sum(min(o.bytes for o in opts) for opts in items)
    for budget in (floor, floor + 20_000, floor + 150_000, floor + 400_000):
        best = min(sum(items[i][j].cost for i, j in enumerate(c))
                   for c in itertools.product(*(range(len(o)) for o in items))
                   if sum(items[i][j].bytes for i, j in enumerate(c)) <= budget)
        used, cost = totals(items, solve_dp(items, budget))
        assert used <= budget
        assert cost == pytest.approx(best, rel=1e-12, abs=1e-15)


def test_budget_at_the_floor_is_every_unit_at_its_smallest():
    """A budget of exactly the smallest allocation has one answer; below it is refused."""
    items = _instance(3, units=5)
    floor = sum(min(o.bytes for o in opts) for opts in items)
    for solve in (solve_dp, solve_greedy):
        assert totals(items, solve(items, floor))[0] == floor
        with pytest.raises(ValueError, match="below the smallest allocation"):
            solve(items, floor - 1)

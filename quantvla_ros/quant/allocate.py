"""Allocation to a byte budget: one option per unit, least summed cost, bytes <= budget.

A multiple-choice knapsack (units x options {bf16, W8A8, W4A8, row-block mixes}). Two
solvers: `solve_dp`, exact on bytes rounded up to a quantum (so its choice always fits the
exact budget), and `solve_greedy`, QVLA's: from the largest option everywhere, repeatedly
take the demotion with the least added cost per byte saved (the paper's incremental price,
not the released code's absolute one) until the budget holds, then spend what is left on
the promotions that cut the most cost per byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Option:
    """One way to store a unit: its exact bytes, its cost (action error), what it means."""

    label: str
    bytes: int
    cost: float
    choice: Any = None


def _check(items: list[list[Option]], budget: int) -> None:
    floor = sum(min(o.bytes for o in opts) for opts in items)
    if floor > budget:
        raise ValueError(f"budget {budget} bytes is below the smallest allocation "
                         f"({floor} bytes: every unit at its smallest option)")


def solve_dp(items: list[list[Option]], budget: int, resolution: int = 100000) -> list[int]:
    """Return each unit's option index minimizing the summed cost within `budget` bytes.

    The DP runs over bytes above the floor (every unit at its smallest option, always
    feasible), counted in quanta of ceil(slack / resolution) and rounded up per option, so
    the exact bytes of the answer never exceed the budget; it is optimal on that grid.
    """
    _check(items, budget)
    base = [min(o.bytes for o in opts) for opts in items]
    slack = budget - sum(base)
    q = max(1, math.ceil(slack / resolution))
    cap = slack // q
    dp = np.full(cap + 1, np.inf)
    dp[0] = 0.0
    picks = np.zeros((len(items), cap + 1), dtype=np.int32)
    weights = [[math.ceil((o.bytes - b) / q) for o in opts] for opts, b in zip(items, base,
                                                                             strict=True)]
    for i, opts in enumerate(items):
        new = np.full(cap + 1, np.inf)
        for j, o in enumerate(opts):
            w = weights[i][j]
            if w > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[w:] = dp[:cap + 1 - w] + o.cost
            better = cand < new
            new[better] = cand[better]
            picks[i, better] = j
        dp = new
    best = float(dp.min())
    # among the cheapest fills, the one using the most bytes (spends the budget)
    c = int(np.flatnonzero(dp <= best + 1e-12 * max(1.0, abs(best)))[-1])
    out = [0] * len(items)
    for i in range(len(items) - 1, -1, -1):
        j = int(picks[i, c])
        out[i] = j
        c -= weights[i][j]
    return fill(items, out, budget)


def solve_greedy(items: list[list[Option]], budget: int) -> list[int]:
    """QVLA's greedy demotion by incremental cost per byte, then a fill of the slack."""
    _check(items, budget)
    cur = [max(range(len(opts)), key=lambda j, o=opts: (o[j].bytes, -o[j].cost))
           for opts in items]
    total = sum(items[i][j].bytes for i, j in enumerate(cur))
    while total > budget:
        best = None
        for i, opts in enumerate(items):
            now = opts[cur[i]]
            for j, o in enumerate(opts):
                if o.bytes < now.bytes:
                    price = (o.cost - now.cost) / (now.bytes - o.bytes)
                    if best is None or price < best[0]:
                        best = (price, i, j)
        _, i, j = best
        total += items[i][j].bytes - items[i][cur[i]].bytes
        cur[i] = j
    return fill(items, cur, budget)


def fill(items: list[list[Option]], picks: list[int], budget: int) -> list[int]:
    """Spend leftover bytes on the promotion that cuts most cost per byte, while one fits.

    Also run after the DP, whose byte grid rounds up.
    """
    cur = list(picks)
    total = sum(items[i][j].bytes for i, j in enumerate(cur))
    while True:
        best = None
        for i, opts in enumerate(items):
            now = opts[cur[i]]
            for j, o in enumerate(opts):
                extra = o.bytes - now.bytes
                if o.cost < now.cost and extra > 0 and total + extra <= budget:
                    gain = (now.cost - o.cost) / extra
                    if best is None or gain > best[0]:
                        best = (gain, i, j)
        if best is None:
            return cur
        _, i, j = best
        total += items[i][j].bytes - items[i][cur[i]].bytes
        cur[i] = j


def totals(items: list[list[Option]], picks: list[int]) -> tuple[int, float]:
    """Return (bytes, cost) of a pick."""
    return (sum(items[i][j].bytes for i, j in enumerate(picks)),
            sum(items[i][j].cost for i, j in enumerate(picks)))

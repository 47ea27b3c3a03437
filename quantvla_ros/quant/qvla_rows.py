"""QVLA's row-block options for one gate / up unit, and the row-level top-up of the budget.

Rows are ordered by their first-order gain from 8 bits, g = max(s4 - s8, 0) summed over gate
and up (one permutation for both, folded into down_proj's columns). With the first h rows
at W8A8 the unit's cost interpolates its exact whole-unit errors by that gain:
cost(h) = E4 - (E4 - E8) * (sum of the top h gains / sum of all gains). The solver picks
among whole blocks; `top_up` then spends what the byte grid leaves by moving single rows to
W8A8 where they cut the most cost per byte (any row count runs: the GEMMs mask N).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from quantvla_ros.quant.allocate import Option
from quantvla_ros.quant.budget import option_bytes
from quantvla_ros.quant.plan import RowBlocks
from quantvla_ros.quant.scheme import QuantScheme


@dataclass
class RowLadder:
    """One gate / up unit's rows by gain, its exact errors and its row-block specs."""

    unit: tuple[str, ...]
    mods: list[nn.Module]
    consumer: str
    order: torch.Tensor  # new row i = old row order[i]
    cum: torch.Tensor  # float64 [N]: gains of the first i + 1 rows in that order
    e8: float
    e4: float
    hi: dict[str, QuantScheme]
    lo: dict[str, QuantScheme]

    @property
    def rows(self) -> int:
        """Rows of each linear of the unit."""
        return self.mods[0].out_features

    def cost(self, h: int) -> float:
        """Interpolated action error with the first h rows at W8A8."""
        total = float(self.cum[-1])
        frac = float(self.cum[h - 1]) / total if total > 0 and h else h / self.rows
        return self.e4 - (self.e4 - self.e8) * frac

    def specs(self, h: int) -> dict[str, RowBlocks]:
        """Each linear's RowBlocks with h rows at W8A8."""
        return {n: RowBlocks(h, self.hi[n], self.lo[n], self.consumer) for n in self.unit}

    def bytes(self, h: int) -> int:
        """Exact stored bytes of the unit with h rows at W8A8 (0: whole W4A8)."""
        if h == 0:
            return sum(option_bytes(m, self.lo[n]) for n, m in zip(self.unit, self.mods,
                                                                    strict=True))
        s = self.specs(h)
        return sum(option_bytes(m, s[n]) for n, m in zip(self.unit, self.mods, strict=True))


def ladder(unit, mods, schemes, exact, rows) -> RowLadder:
    """Build a unit's ladder from its exact errors and first-order row errors."""
    gain = sum((rows[n]["w4a8"] - rows[n]["w8a8"]).clamp_min(0) for n in unit)
    order = torch.argsort(gain, descending=True, stable=True)
    return RowLadder(unit, mods, unit[0].rpartition(".")[0] + ".down_proj", order,
                     torch.cumsum(gain[order].double(), 0), exact["w8a8"], exact["w4a8"],
                     {n: schemes["w8a8"][n] for n in unit},
                     {n: schemes["w4a8"][n] for n in unit})


def block_options(lad: RowLadder, step: int) -> list[Option]:
    """Return the unit's mixes at every multiple of `step` rows (choice: W8A8 rows)."""
    return [Option(f"rows {h}/{lad.rows} w8a8", lad.bytes(h), lad.cost(h), h)
            for h in range(step, lad.rows, step)]


def top_up(ladders: dict[int, RowLadder], hi_rows: dict[int, int], used: int,
           budget: int) -> tuple[dict[int, int], int]:
    """Add single W8A8 rows where they cut most cost per byte while the budget allows.

    `hi_rows` maps each unit that is at W4A8 (0) or mixed (h) to its W8A8 rows; returns
    the new counts and the bytes used.
    """
    hi = dict(hi_rows)
    step = {i: ladders[i].bytes(2) - ladders[i].bytes(1) for i in hi}
    first = {i: ladders[i].bytes(1) - ladders[i].bytes(0) for i in hi}
    while True:
        best = None
        for i, h in hi.items():
            lad = ladders[i]
            if h + 1 >= lad.rows:
                continue
            extra = first[i] if h == 0 else step[i]
            gain = lad.cost(h) - lad.cost(h + 1)
            if used + extra <= budget and gain > 0 and (best is None or
                                                        gain / extra > best[0]):
                best = (gain / extra, i, extra)
        if best is None:
            return hi, used
        _, i, extra = best
        hi[i] += 1
        used += extra

"""QVLA, label-free (`quantvla quantize --method qvla --budget B`).

Units: every linear of the layout, except that a GeGLU's gate and up are one unit (one
fused GEMM at runtime, one shared row permutation). Options per unit: bf16, W8A8, W4A8, and
for gate / up units W8A8 / W4A8 row blocks (the rows that gain most from 8 bits first, in
blocks of `block` rows; the permutation is folded into down_proj's input columns).

Costs (quant/sensitivity.py): each unit's exact action error at W8A8 and W4A8 (one unit
quantized at a time, the rest float); a row-block mix interpolates between them by the
first-order per-row errors, cost(k) = E4 - (E4 - E8) * (gain of the k chosen rows / gain
of all rows), gain = max(s4 - s8, 0) per row. Solved exactly (`solve_dp`) or with QVLA's
greedy (`--method-option solver=greedy`); the other solver's totals are recorded beside.
What the byte grid leaves is then spent row by row (quant/qvla_rows.py `top_up`), so the
stored bytes land within one row's bytes of the budget whenever a gate / up unit is at
W4A8 or mixed.

Options (--method-option): solver=dp|greedy, row_blocks=1|0, probes=R (4), block=ROWS,
cost=pooled|median (how a unit's per-frame errors reduce over the calibration frames:
the pooled mean squared error, the default, or the per-frame median), costs=FILE (measure
once for a budget sweep: per-frame errors, read when the fingerprint matches, so either
reduction comes from the one measurement).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import torch

from quantvla_ros.quant.allocate import Option, solve_dp, solve_greedy, totals
from quantvla_ros.quant.budget import option_bytes
from quantvla_ros.quant.plan import MethodContext, Plan
from quantvla_ros.quant.qvla_rows import block_options, ladder, top_up
from quantvla_ros.quant.scheme import QuantScheme
from quantvla_ros.quant.sensitivity import (
    COSTS,
    reduce_frames,
    row_errors,
    supports_row_errors,
    unit_frame_errors,
)

W8, W4 = "w8a8", "w4a8"


def units_of(names: list[str]) -> list[tuple[str, ...]]:
    """Group the layout's linears: (gate, up) of one MLP together, every other alone."""
    chosen, out, seen = set(names), [], set()
    for n in names:
        if n in seen:
            continue
        base, _, leaf = n.rpartition(".")
        up = f"{base}.up_proj"
        if leaf == "gate_proj" and up in chosen:
            out.append((n, up))
            seen.update((n, up))
        elif not (leaf == "up_proj" and f"{base}.gate_proj" in chosen):
            out.append((n,))
            seen.add(n)
    return out


def option_schemes(ctx: MethodContext) -> dict[str, dict[str, QuantScheme]]:
    """Return each linear's W8A8 (per channel) and W4A8 scheme.

    W4A8 keeps the layout's int4 grouping when it is W4A8, else groups of 128 where K
    allows, else one scale per channel.
    """
    out: dict[str, dict[str, QuantScheme]] = {W8: {}, W4: {}}
    for n, s in ctx.schemes.items():
        k = ctx.model.get_submodule(n).in_features
        group = s.group_size if s.bits == W4 else (128 if k % 128 == 0 else None)
        base = replace(s, hadamard=False)
        out[W8][n] = replace(base, w_bits=8, a_bits=8, group_size=None)
        out[W4][n] = replace(base, w_bits=4, a_bits=8, group_size=group)
    return out


def block_rows(n: int, asked: int | None) -> int:
    """Rows per block: `asked`, else 128 (the GEMM N-tile) from 1024 rows, else n / 8."""
    if asked:
        return asked
    return 128 if n >= 1024 else max(16, (n // 8) // 16 * 16)


class Qvla:
    """The `qvla` method (quant/plan.py's contract)."""

    name = "qvla"

    def plan(self, ctx: MethodContext) -> Plan:
        """Measure, build the options, solve, top up by rows, return the plan and record."""
        opts = ctx.options
        solver = opts.get("solver", "dp")
        if solver not in ("dp", "greedy"):
            raise ValueError(f"qvla: solver is dp or greedy, got {solver!r}")
        reduction = opts.get("cost", "pooled")
        if reduction not in COSTS:
            raise ValueError(f"qvla: cost is {' or '.join(COSTS)}, got {reduction!r}")
        units = units_of(list(ctx.schemes))
        schemes = option_schemes(ctx)
        rows_ok = (opts.get("row_blocks", "1") != "0" and supports_row_errors(ctx)
                   and not any(s.clip_search or s.act_clip is not None
                               for s in ctx.schemes.values()))
        pairs = [u for u in units if len(u) == 2] if rows_ok else []
        frames, rows, source = measure(ctx, units, pairs, schemes,
                                       int(opts.get("probes", 4)), opts.get("costs"))
        exact = reduce_units(frames, reduction)
        alt_cost = reduce_units(frames, COSTS[1 - COSTS.index(reduction)])
        items, ladders = [], {}
        for i, u in enumerate(units):
            mods = [ctx.model.get_submodule(n) for n in u]
            options = [Option("bf16", sum(option_bytes(m, None) for m in mods), 0.0)]
            options += [Option(o, sum(option_bytes(m, schemes[o][n])
                                      for n, m in zip(u, mods, strict=True)), exact[u][o])
                        for o in (W8, W4)]
            if u in pairs:
                ladders[i] = ladder(u, mods, schemes, exact[u], rows)
                step = block_rows(ladders[i].rows, int(opts["block"]) if "block" in opts
                                  else None)
                options += block_options(ladders[i], step)
            items.append(options)
        solve, other = (solve_dp, solve_greedy) if solver == "dp" else (solve_greedy, solve_dp)
        picks = solve(items, ctx.budget_bytes)
        alt = totals(items, other(items, ctx.budget_bytes))
        solved = totals(items, picks)
        # W8A8 rows per unit that is at W4A8 (0) or mixed: the row-level top-up may add some
        hi = {i: (0 if items[i][j].label == W4 else items[i][j].choice)
              for i, j in enumerate(picks) if i in ladders
              and (items[i][j].label == W4 or items[i][j].choice is not None)}
        hi, used = top_up(ladders, hi, solved[0], ctx.budget_bytes)
        plan = Plan()
        record = []
        cost = 0.0
        for i, (u, j) in enumerate(zip(units, picks, strict=True)):
            label, unit_bytes, unit_cost = items[i][j].label, items[i][j].bytes, items[i][j].cost
            if hi.get(i):
                lad = ladders[i]
                label = f"rows {hi[i]}/{lad.rows} w8a8"
                unit_bytes, unit_cost = lad.bytes(hi[i]), lad.cost(hi[i])
                plan.row_blocks.update(lad.specs(hi[i]))
                plan.permutations.update({n: lad.order for n in u})
            elif label == "bf16":
                plan.keep_float += u
            else:
                label = W4 if i in hi else label
                plan.layers.update({n: schemes[label][n] for n in u
                                    if schemes[label][n] != ctx.schemes[n]})
            cost += unit_cost
            if hi.get(i):  # which original rows (neurons) run at W8A8
                record_rows = {"rows_w8a8": sorted(ladders[i].order[:hi[i]].tolist())}
            else:
                record_rows = {}
            record.append({"linears": list(u), "w8a8": exact[u][W8], "w4a8": exact[u][W4],
                           "other_cost": alt_cost[u], **record_rows,
                           "first_order_rowsum_w8a8": _sum(rows, u, W8),
                           "first_order_rowsum_w4a8": _sum(rows, u, W4),
                           "choice": label, "bytes": unit_bytes, "cost": unit_cost})
        plan.record = {
            "solver": solver, "cost": cost, "planned_bytes": used,
            "solver_only": {"bytes": solved[0], "cost": solved[1]},
            "other_solver": {"solver": "greedy" if solver == "dp" else "dp",
                             "bytes": alt[0], "cost": alt[1]},
            "cost_reduction": reduction,
            "cost_unit": ("median over frames of the per-frame" if reduction == "median"
                          else "pooled") + " mean squared action error vs the float teacher "
                         "(model space, robot dims), summed over units; other_cost: the other "
                         "reduction of the same per-frame errors",
            "calibration_batches": len(ctx.batches), "probes": int(opts.get("probes", 4))
            if pairs else 0, "costs": source,
            "units": record,
        }
        return plan

    def refine(self, ctx: MethodContext, student, plan: Plan) -> dict:
        """QVLA changes nothing after quantization (ATM / OHB follow as usual)."""
        return {}


def measure(ctx, units, pairs, schemes, probes: int, cache: str | None):
    """Return (per-frame unit errors, first-order row errors, where they came from).

    Per-frame errors: {unit: {option: float64 [frames]}} (`reduce_units` makes costs).
    `cache` (--method-option costs=FILE) lets a budget sweep measure once: a file whose
    fingerprint (teacher tensors, calibration inputs, schemes, probes) matches and that
    holds per-frame errors is read, anything else is measured and written there.
    """
    key = fingerprint(ctx, units, pairs, schemes, probes)
    if cache and Path(cache).is_file():
        saved = torch.load(cache)
        if saved.get("fingerprint") == key and "frames" in saved:
            ctx.log(f"qvla: costs read from {cache}")
            return ({u: saved["frames"]["|".join(u)] for u in units}, saved["rows"],
                    f"read from {cache} ({key[:12]})")
    ctx.log(f"qvla: exact action error of {len(units)} units at w8a8 / w4a8 "
            f"({2 * len(units)} sampler runs over {len(ctx.batches)} batches)")
    _, frames = unit_frame_errors(ctx, units, schemes)
    rows = {}
    if pairs:
        ctx.log(f"qvla: first-order row errors of {len(pairs)} gate / up pairs")
        rows = row_errors(ctx, [n for u in pairs for n in u], schemes, probes=probes)
    if cache:
        torch.save({"fingerprint": key, "frames": {"|".join(u): v for u, v in frames.items()},
                    "rows": rows}, cache)
    return frames, rows, f"measured ({key[:12]})"


def reduce_units(frames, cost: str) -> dict[tuple[str, ...], dict[str, float]]:
    """Reduce per-frame errors to {unit: {option: cost}} (`pooled` mean or `median`)."""
    return {u: {o: reduce_frames(e, cost) for o, e in per.items()} for u, per in frames.items()}


def fingerprint(ctx, units, pairs, schemes, probes: int) -> str:
    """Return a sha256 over what the costs depend on."""
    h = hashlib.sha256(repr((units, pairs, schemes, probes, ctx.action_dims)).encode())
    for k, t in ctx.model.state_dict().items():
        h.update(k.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    for b in ctx.batches:
        for k in sorted(b):
            if isinstance(b[k], torch.Tensor):
                h.update(k.encode())
                h.update(b[k].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _sum(rows, unit, option) -> float | None:
    if unit[0] not in rows:
        return None
    return float(sum(rows[n][option].sum() for n in unit))


METHOD = Qvla()

"""DA-PTQ's drift-aware allocation: whole linears to precisions, within a byte budget.

Drift weights (DA-PTQ Eq. 12-17) weight the action dimensions. They are a hyper-parameter,
not physics: as written the equations give the gripper the largest weight and are not
monotone in the dimension (shared/QVLA-DAPTQ.md 2.3; `drift_weights` reproduces those
numbers), so `uniform` or an explicit vector may be given instead, and the choice is recorded.

Each candidate linear gets a measured cost per precision: the drift-weighted squared action
error of the float teacher with only that linear quantized, from the same noise, relative
to the teacher's drift-weighted displacement energy (label-free: the reference is the
teacher's own chunk). Unlike the paper's gradient score (Eq. 19) it includes the size of the
quantization perturbation. `allocate` then picks one precision per linear minimizing the
summed cost within the budget (exact knapsack), so no remaining upgrade that lowers the
cost still fits: what is left is smaller than every such upgrade.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.scheme import QuantScheme

DRIFT_AXES = (1.8, 1.8, 0.15)  # w_x, w_y, w_theta of Eq. 16 (secondary sources, unconfirmed)
DRIFT_DAMPING = 3e-4  # Tikhonov lambda of Eq. 15 (secondary sources, unconfirmed)


def drift_weights(actions: torch.Tensor, axes=DRIFT_AXES,
                  damping: float = DRIFT_DAMPING) -> torch.Tensor:
    """Return Eq. 17's normalized weights [J] from actions [..., J] (the planar chain).

    The J action dims are read as joint increments of a planar chain (Eq. 12), whose
    structural Jacobian [3, J] (Eq. 13-14) is inverted with damping (Eq. 15); the weight of
    dim j is the mean over actions of sum_c w_c |J^+_{j,c}| (Eq. 16), normalized to mean 1.
    """
    a = actions.detach().double().reshape(-1, actions.shape[-1])
    n = a.shape[-1]
    theta = a.cumsum(-1)
    sin, cos = theta[:, :n - 1].sin(), theta[:, :n - 1].cos()
    jx = torch.stack([-sin[:, j:].sum(-1) for j in range(n)], -1)  # sums over k = j..n-1
    jy = torch.stack([cos[:, j:].sum(-1) for j in range(n)], -1)
    jac = torch.stack([jx, jy, torch.ones_like(jx)], -2)  # [R, 3, J]
    eye = torch.eye(3, dtype=torch.float64)
    pinv = jac.transpose(-1, -2) @ torch.linalg.inv(jac @ jac.transpose(-1, -2) + damping * eye)
    s = (pinv.abs() * torch.tensor(axes, dtype=torch.float64)).sum(-1).mean(0)
    return (s / s.mean()).float()


def parse_drift(spec: str, teacher_actions: torch.Tensor) -> torch.Tensor:
    """Return the drift weights [J] of ``spec``: eq16, uniform, or J comma-separated numbers.

    ``teacher_actions`` [N, H, J] are the teacher's own chunks (eq16 reads them, label-free).
    """
    j = teacher_actions.shape[-1]
    if spec == "eq16":
        return drift_weights(teacher_actions)
    if spec == "uniform":
        return torch.ones(j)
    w = torch.tensor([float(x) for x in spec.split(",")])
    if len(w) != j or bool((w < 0).any()) or float(w.sum()) == 0:
        raise ValueError(f"drift weights {spec!r}: give eq16, uniform or {j} non-negative "
                         "numbers, not all 0")
    return w / w.mean()


def weighted_error(student: torch.Tensor, teacher: torch.Tensor, noise: torch.Tensor,
                   weights: torch.Tensor, reduce: str = "pooled") -> float:
    """Drift-weighted squared error over the teacher's weighted displacement energy.

    Chunks [N, H, >=J] in model space; the first J = len(weights) dims are the robot's.
    ``pooled`` sums both over frames first; ``median`` takes the median of the per-frame
    ratios, so that one frame whose gripper flips (the teacher sat near the switch) cannot
    decide a linear's cost alone.
    """
    j = len(weights)
    w = weights.double()
    err = ((student[..., :j] - teacher[..., :j]).double() ** 2 * w).flatten(1).sum(1)
    disp = ((teacher[..., :j] - noise[..., :j]).double() ** 2 * w).flatten(1).sum(1)
    if reduce == "median":
        return float((err / disp.clamp_min(1e-30)).median())
    if reduce != "pooled":
        raise ValueError(f"reduce is pooled or median, not {reduce!r}")
    return float(err.sum() / disp.sum().clamp_min(1e-30))


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


@torch.no_grad()
def single_layer_errors(model: nn.Module, batches: list[dict],
                        sample: Callable[[nn.Module, list[dict]], torch.Tensor],
                        states: dict[str, dict[str, QuantScheme]], weights: torch.Tensor,
                        progress=None, reduce: str = "pooled") -> dict[str, dict[str, float]]:
    """Return, per linear and quantized state, `weighted_error` with only it quantized.

    ``states`` maps each candidate linear to {state name: scheme}. The model is changed one
    linear at a time and always restored (also on error).
    """
    noise = torch.cat([b["noise"] for b in batches]).float().cpu()
    ref = sample(model, batches)
    out: dict[str, dict[str, float]] = {}
    items = list(states.items())
    for name, options in (progress(items) if progress else items):
        orig = model.get_submodule(name)
        out[name] = {}
        try:
            for state, scheme in options.items():
                _set(model, name, QuantLinear.from_float(orig, scheme))
                out[name][state] = weighted_error(sample(model, batches), ref, noise, weights,
                                                  reduce)
        finally:
            _set(model, name, orig)
    return out


@dataclass(frozen=True)
class Option:
    """One precision of one linear: its name, exact stored bytes and measured cost."""

    state: str
    bytes: int
    error: float


def allocate(options: dict[str, list[Option]], budget: int,
             cells: int = 200_000) -> dict[str, Option]:
    """Choose one option per linear with total bytes <= ``budget`` and least summed error.

    A multiple-choice knapsack solved exactly by dynamic programming over bytes in units of
    the increments' greatest common divisor (coarser, rounding every increment up, only
    when that would exceed ``cells`` cells: the bound then still holds). Among equal errors
    the larger spend wins. Raises ValueError when even the smallest options exceed the
    budget.
    """
    names = list(options)
    base = {n: min(options[n], key=lambda o: (o.bytes, o.error)) for n in names}
    floor = sum(o.bytes for o in base.values())
    if floor > budget:
        raise ValueError(f"the budget ({budget} bytes) is below the smallest allocation "
                         f"({floor} bytes)")
    room = budget - floor
    extras = [o.bytes - base[n].bytes for n in names for o in options[n]
              if o.bytes > base[n].bytes]
    unit = math.gcd(*extras) if extras else 1
    unit = max(unit, -(-room // cells))
    size = room // unit + 1
    best = np.zeros(size)  # least added error (vs base) at <= c units spent
    picks = []
    for n in names:
        new, pick = best.copy(), np.full(size, -1, np.int32)
        for k, o in enumerate(options[n]):
            step = -(-(o.bytes - base[n].bytes) // unit)
            if o is base[n] or o.bytes < base[n].bytes or step >= size:
                continue
            cand = np.full(size, np.inf)
            cand[step:] = best[:size - step] + (o.error - base[n].error)
            better = cand < new
            new[better], pick[better] = cand[better], k
        best = new
        picks.append(pick)
    c = int(size - 1 - np.argmin(best[::-1]))  # the largest spend among the least errors
    chosen = {}
    for n, pick in zip(reversed(names), reversed(picks), strict=True):
        k = int(pick[c])
        chosen[n] = base[n] if k < 0 else options[n][k]
        if k >= 0:
            c -= -(-(chosen[n].bytes - base[n].bytes) // unit)
    return {n: chosen[n] for n in names}


def smallest_upgrade(options: dict[str, list[Option]], chosen: dict[str, Option]) -> int | None:
    """Return the fewest extra bytes of any upgrade `allocate` may still take (None: none)."""
    extras = [o.bytes - chosen[n].bytes for n, opts in options.items() for o in opts
              if o.bytes > chosen[n].bytes and o.error <= chosen[n].error]
    return min(extras) if extras else None

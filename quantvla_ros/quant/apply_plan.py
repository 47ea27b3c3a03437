"""Apply a method's Plan (quant/plan.py) to the float student: bf16, schemes, row blocks.

Order matters: permutations are folded into the float weights first (a folded consumer such
as down_proj is then quantized with its columns already permuted), then `quantize_` runs
over the layout minus the kept-float and row-blocked linears, then the row-blocked linears
are packed as two blocks each.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from quantvla_ros.quant.apply import QuantConfig, _set_module, quantize_
from quantvla_ros.quant.observe import LinearInputs
from quantvla_ros.quant.plan import Plan
from quantvla_ros.quant.row_blocks import RowBlockLinear, fold_permutation


def plan_config(qcfg: QuantConfig, plan: Plan) -> QuantConfig:
    """Return the config whose per-linear schemes include the plan's."""
    return replace(qcfg, layers={**qcfg.layers, **plan.layers})


def fold_plan_permutations(model: nn.Module, plan: Plan) -> None:
    """Fold each consumer-absorbed permutation into the float weights, once per consumer.

    Linears sharing a consumer (gate and up) must share one permutation.
    """
    by_consumer: dict[str, list[str]] = {}
    for name, rb in plan.row_blocks.items():
        if rb.consumer is not None:
            by_consumer.setdefault(rb.consumer, []).append(name)
    for consumer, producers in by_consumer.items():
        perms = [plan.permutations[n] for n in producers]
        if any(not torch.equal(perms[0], p) for p in perms[1:]):
            raise ValueError(f"{', '.join(producers)} feed {consumer} and must share one "
                             "row permutation")
        fold_permutation(model, producers, consumer, perms[0])


@torch.no_grad()
def apply_plan(model: nn.Module, qcfg: QuantConfig, plan: Plan,
               inputs: LinearInputs | None = None, progress=None) -> list[str]:
    """Quantize `model` in place as `qcfg` (with plan_config applied) and `plan` say.

    Returns the quantized linears' names (row-blocked ones included, kept-float ones not),
    in the layout's order.
    """
    if plan.row_blocks and qcfg.needs_calibration():
        raise ValueError("row blocks cannot be combined with smoothing, clip search or "
                         "activation clipping (their statistics are recorded unpermuted)")
    skip = set(plan.keep_float) | set(plan.row_blocks)
    order = list(qcfg.schemes(model))
    fold_plan_permutations(model, plan)
    rest = replace(qcfg, layout=replace(qcfg.layout, exclude=qcfg.layout.exclude
                                        + tuple(sorted(skip))),
                   layers={k: v for k, v in qcfg.layers.items() if k not in skip})
    done = set(quantize_(model, rest, inputs, progress=progress))
    for name, rb in plan.row_blocks.items():
        linear = model.get_submodule(name)
        perm = plan.permutations.get(name)
        _set_module(model, name, RowBlockLinear.from_float(linear, rb, perm))
        done.add(name)
    return [n for n in order if n in done]

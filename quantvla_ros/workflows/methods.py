"""`--method` / `--budget`: pick the post-training method and hand it the calibration set.

Methods by name (the contract is quant/plan.py's docstring):
- ``quantvla`` (default): the layout's scheme on every linear; no plan. Its bytes set the
  budget the others are compared at.
- ``qvla``: label-free action-space sensitivity, allocation over {bf16, W8A8, W4A8} and
  W8A8 / W4A8 row blocks to a byte budget (quant/qvla.py).
- ``daptq``: DA-PTQ (quant/daptq.py, module attribute ``METHOD``).

`--budget B` is a fraction of the layout linears' bf16 bytes; without it a method gets the
bytes of ``quantvla`` at the same --bits, so methods compare at equal bytes.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from quantvla_ros.quant.apply import QuantConfig
from quantvla_ros.quant.budget import layout_bf16_bytes, method_bytes, plan_bytes
from quantvla_ros.quant.plan import MethodContext, Plan
from quantvla_ros.workflows.action_metrics import robot_affine

METHODS = ("quantvla", "qvla", "daptq")
_MODULES = {"qvla": "quantvla_ros.quant.qvla", "daptq": "quantvla_ros.quant.daptq"}


def method_named(name: str):
    """Return the method object of `name` (None for quantvla); ValueError for unknown / unbuilt."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    if name == "quantvla":
        return None
    try:
        module = importlib.import_module(_MODULES[name])
    except ModuleNotFoundError as exc:
        if exc.name != _MODULES[name]:
            raise
        raise ValueError(f"method {name!r} is not built in this version") from None
    return module.METHOD


def parse_budget(text: str | float | None) -> float | None:
    """``0.262``, ``26.2%`` -> 0.262; None stays None; must be in (0, 1]."""
    if text is None:
        return None
    s = str(text).strip()
    try:
        value = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise ValueError(f"--budget: expected a fraction like 0.3 or 30%, got {text!r}") \
            from None
    if not 0 < value <= 1:
        raise ValueError(f"--budget: a fraction of the bf16 bytes in (0, 1], got {value:g}")
    return value


def method_context(teacher, student: nn.Module, qcfg: QuantConfig, budget: float | None,
                   batches: list[dict], options: dict[str, str] | None = None,
                   log=print) -> MethodContext:
    """Build the context a method plans in: teacher, layout, budget bytes, calibration set.

    `student` is an unquantized copy used only to size the layout (the teacher is never
    touched). Without a budget, the bytes of the default (quantvla) plan are the budget.
    """
    schemes = qcfg.schemes(student)
    base = layout_bf16_bytes(student, schemes)
    if budget is None:
        budget_bytes = plan_bytes(student, schemes, Plan())
        budget = budget_bytes / base
    else:
        budget_bytes = int(budget * base)
    dims = robot_affine(teacher.normalizer, teacher.cfg.action_dim)[1].shape[0]
    family = teacher.family
    return MethodContext(model=teacher.model, layout=qcfg.layout, scheme=qcfg.scheme,
                         schemes=schemes, budget=budget, budget_bytes=budget_bytes,
                         bf16_bytes=base, batches=batches,
                         sample=lambda m, b: teacher.family.sample(m, b),
                         action_dims=int(dims),
                         options=dict(options or {}), log=log,
                         grad_chunk=family.grad_chunk if family.supports_grad_chunk else None)


def plan_method(name: str, ctx: MethodContext) -> Plan:
    """Run method `name`'s plan (quantvla: the empty plan)."""
    method = method_named(name)
    return Plan() if method is None else method.plan(ctx)


def refine_method(name: str, ctx: MethodContext, student: nn.Module, plan: Plan) -> dict:
    """Run method `name`'s refine step on the quantized student ({} for quantvla)."""
    method = method_named(name)
    return {} if method is None else dict(method.refine(ctx, student, plan) or {})


def method_record(name: str, ctx: MethodContext, plan: Plan, refined: dict,
                  student: nn.Module) -> dict[str, Any]:
    """QuantizationRecord fields: method, budget, row blocks and the allocation record.

    The allocation's `bytes` are what the artifact stores for the layout, counted on the
    quantized (and refined) student: packed weights, scales, float remainders at bf16,
    and whatever refine added (DA-PTQ's CSRC d as biases, inside the layout or not;
    `budget.method_bytes`); `refine_bytes` is that addition over the plan's bytes. Both sit
    beside the budget's, so a reader sees how close the method came.
    """
    if name == "quantvla" and not plan.row_blocks:
        return {}
    planned = plan_bytes(ctx.model, ctx.schemes, plan)
    stored = method_bytes(student, ctx.model, ctx.schemes)
    record = {**plan.record, "budget_bytes": ctx.budget_bytes, "bf16_bytes": ctx.bf16_bytes,
              "bytes": stored, "refine_bytes": stored - planned,
              "fraction": stored / ctx.bf16_bytes, "float": sorted(plan.keep_float)}
    if refined:
        record["refine"] = refined
    return {"method": name, "budget": ctx.budget, "row_blocks": dict(plan.row_blocks),
            "allocation": record}

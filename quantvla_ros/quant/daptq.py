"""DA-PTQ on pi0.5 (`quantvla quantize --method daptq --budget B`), label-free.

plan (before quantization, on the float teacher): drift-aware allocation
(quant/daptq_allocate.py). Candidates are the layout's action-expert linears, each bf16 or
the layout's scheme (the paper's whole-layer map, Algorithm 1 stage 3: ``states=paper``).
With ``states=fill`` (default) every layout linear may also take W8A8 (the note's middle
option and its global variant), so that a small model can spend its budget to within a
fraction of a percent: one expert linear of the trained LIBERO policy is 1.6% of its
layout's bf16 bytes, and on pi05-tiny the expert-only map leaves 3.6% of a 0.35 budget
unspent.

refine (after quantization, before ATM / OHB): CSRC at the interface
(quant/daptq_compensation.py), fitted layer by layer on the final mixed model (the note's
recommended order: map first, then compensation) and folded into the k / v projections.

Options (--method-option K=V; every one is recorded in the manifest's allocation):
  drift=eq16|uniform|w1,...,wJ   action-dim weights (default eq16 on the teacher's chunks)
  states=fill|paper              candidate precisions (above)
  score_frames=N                 calibration frames the per-linear costs are measured on (16)
  cost=median|pooled             a linear's cost over those frames: the median of per-frame
                                 errors (default; pooled sums let one frame's gripper flip
                                 set the cost: docs/method.md, DA-PTQ)
  csrc=paired|moments|off        the compensation's per-channel solver (paired)
  csrc_bias=auto|1|0             fit d as a bias (1: its bf16 bytes count in the budget); 0
                                 keeps g only, whose fold is free; auto (default): 1 where
                                 the budget has room for the biases (not at quantvla's bytes)
  csrc_rank=R                    rank of the cross-channel map (0; > 0 needs float k / v)

Nothing here reads recorded actions: the buffers hold none, and every reference is the
teacher's own chunk from the same noise.
"""

from __future__ import annotations

from torch import nn

from quantvla_ros.quant.budget import option_bytes
from quantvla_ros.quant.daptq_allocate import (
    Option,
    allocate,
    parse_drift,
    single_layer_errors,
    smallest_upgrade,
)
from quantvla_ros.quant.daptq_compensation import CsrcConfig, calibrate_csrc, interface_names
from quantvla_ros.quant.plan import MethodContext, Plan
from quantvla_ros.quant.scheme import parse_bits

BF16 = 2
DEFAULTS = {"drift": "eq16", "states": "fill", "score_frames": "16", "csrc": "paired",
            "csrc_bias": "auto", "csrc_rank": "0", "cost": "median"}


def options_of(ctx: MethodContext) -> dict[str, str]:
    """Return the method options with defaults; unknown keys are an error."""
    unknown = sorted(set(ctx.options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"daptq: unknown option(s) {', '.join(unknown)}; known: "
                         f"{', '.join(DEFAULTS)}")
    return {**DEFAULTS, **ctx.options}


def csrc_config(opts: dict[str, str], bias: bool | None = None) -> CsrcConfig | None:
    """Return the compensation's config (None: off); ``bias`` decides csrc_bias=auto."""
    if opts["csrc"] == "off":
        return None
    if opts["csrc_bias"] not in ("auto", "0", "1"):
        raise ValueError(f"daptq: csrc_bias is auto, 0 or 1, not {opts['csrc_bias']!r}")
    fit_bias = opts["csrc_bias"] == "1" or (opts["csrc_bias"] == "auto" and bool(bias))
    return CsrcConfig(solver=opts["csrc"], bias=fit_bias, rank=int(opts["csrc_rank"]))


def candidate_states(ctx: MethodContext, fill: bool) -> dict[str, dict[str, object]]:
    """Return per candidate linear {state: scheme, or None for bf16}."""
    w8 = parse_bits("w8a8")
    out: dict[str, dict[str, object]] = {}
    for name, scheme in ctx.schemes.items():
        states: dict[str, object] = {scheme.bits: scheme}
        if name.startswith("expert."):
            states["bf16"] = None
        if fill and scheme.bits != "w8a8":
            states["w8a8"] = w8
        if len(states) > 1:
            out[name] = states
    return out


def _score_batches(batches: list[dict], frames: int) -> list[dict]:
    out, n = [], 0
    for b in batches:
        if n >= frames:
            break
        out.append(b)
        n += b["noise"].shape[0]
    return out


class Daptq:
    """The method object workflows/methods.py dispatches to."""

    name = "daptq"

    def plan(self, ctx: MethodContext) -> Plan:
        """Measure each candidate's drift-weighted cost per precision, allocate the budget."""
        opts = options_of(ctx)
        csrc = csrc_config(opts, bias=True)
        batches = _score_batches(ctx.batches, int(opts["score_frames"]))
        teacher_chunks = ctx.sample(ctx.model, batches)[..., :ctx.action_dims]
        weights = parse_drift(opts["drift"], teacher_chunks)
        ctx.log("daptq drift weights: " + " ".join(f"{w:.3f}" for w in weights.tolist()))
        states = candidate_states(ctx, opts["states"] == "fill")
        quantized = {n: {s: sch for s, sch in st.items() if sch is not None}
                     for n, st in states.items()}
        # the teacher is changed one linear at a time and restored (never left modified)
        errors = single_layer_errors(ctx.model, batches, ctx.sample, quantized, weights,
                                     reduce=opts["cost"])
        # d's bf16 bytes on every interface linear without a bias, in the layout or not
        # (a float k / v outside it grows too): every stored byte counts in the budget
        bias = {n: BF16 * ctx.model.get_submodule(n).out_features
                for n in interface_names(ctx.model)
                if csrc is not None and csrc.bias and ctx.model.get_submodule(n).bias is None}
        options = {n: [Option(s, option_bytes(ctx.model.get_submodule(n), sch) + bias.get(n, 0),
                              errors[n].get(s, 0.0)) for s, sch in st.items()]
                   for n, st in states.items()}
        fixed = sum(option_bytes(ctx.model.get_submodule(n), s) + bias.get(n, 0)
                    for n, s in ctx.schemes.items() if n not in states)
        fixed += sum(b for n, b in bias.items() if n not in ctx.schemes)
        floor = fixed + sum(min(o.bytes for o in opts_) for opts_ in options.values())
        if bias and opts["csrc_bias"] == "auto" and floor > ctx.budget_bytes:
            ctx.log("daptq: no room for CSRC's biases in the budget: g only")
            fixed -= sum(bias[n] for n in bias if n not in states)
            options = {n: [Option(o.state, o.bytes - bias.get(n, 0), o.error) for o in opts_]
                       for n, opts_ in options.items()}
            bias = {}
        chosen = allocate(options, ctx.budget_bytes - fixed)
        spent = fixed + sum(o.bytes for o in chosen.values())
        ctx.log(f"daptq: {spent} of {ctx.budget_bytes} budget bytes "
                f"({100 * spent / ctx.budget_bytes:.2f}%); bf16: "
                + ", ".join(n for n, o in chosen.items() if o.state == "bf16"))
        plan = Plan(
            layers={n: states[n][o.state] for n, o in chosen.items()
                    if o.state not in ("bf16", ctx.schemes[n].bits)},
            keep_float=tuple(sorted(n for n, o in chosen.items() if o.state == "bf16")))
        plan.record = {
            "solver": "exact knapsack over measured single-linear costs",
            "options": opts, "csrc_bias": bool(bias),
            "drift_weights": [round(w, 6) for w in weights.tolist()],
            "score_frames": sum(b["noise"].shape[0] for b in batches),
            "bytes_with_csrc_bias": spent, "csrc_bias_bytes": sum(bias.values()),
            "left_bytes": ctx.budget_bytes - spent,
            "smallest_upgrade_bytes": smallest_upgrade(options, chosen),
            "costs": {n: {s: errors[n].get(s, 0.0) for s in st} for n, st in states.items()},
            "chosen": {n: o.state for n, o in chosen.items()},
        }
        return plan

    def refine(self, ctx: MethodContext, student: nn.Module, plan: Plan) -> dict:
        """Fit and fold CSRC at the interface of the quantized student."""
        csrc = csrc_config(options_of(ctx), bias=plan.record.get("csrc_bias"))
        if csrc is None:
            return {}
        _, rows = calibrate_csrc(ctx.model, student, ctx.batches, csrc, log=ctx.log)
        return {"csrc": {"solver": csrc.solver, "bias": csrc.bias, "rank": csrc.rank,
                         "clamp": list(csrc.clamp), "band": csrc.band, "interface": rows}}


METHOD = Daptq()

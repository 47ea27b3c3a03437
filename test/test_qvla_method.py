"""QVLA on pi05-micro: the label-free oracle, its first-order rows, and the whole method."""

import copy
import math

import pytest
import torch
from torch import nn

from quantvla_ros.quant.apply import QuantConfig, _set_module
from quantvla_ros.quant.artifact import load_artifact
from quantvla_ros.quant.balance import BalanceConfig
from quantvla_ros.quant.footprint import stored_bytes
from quantvla_ros.quant.layouts import get_layout
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.qvla import option_schemes, units_of
from quantvla_ros.quant.row_blocks import RowBlockLinear
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.quant.sensitivity import (
    action_error,
    frame_errors,
    reduce_frames,
    row_errors,
    unit_errors,
)
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.workflows.methods import method_context
from quantvla_ros.workflows.quantize import (
    QuantizeRequest,
    open_buffer_for,
    prepare_batches,
    quantize_policy,
)

GATE = "expert.layers.0.mlp.gate_proj"


class Poisoned(dict):
    """Model inputs that fail loudly if anything reads a recorded action from them."""

    def __getitem__(self, key):
        if "action" in key:
            raise AssertionError(f"the label-free oracle read {key!r}")
        return super().__getitem__(key)

    def get(self, key, default=None):
        return self[key] if key in self else default


@pytest.fixture(scope="module")
def micro():
    policy = Policy.from_config("pi05-micro", seed=0)
    batches = prepare_batches(policy, list(open_buffer_for(policy, "synthetic:4")), 4)
    qcfg = QuantConfig(parse_bits("w4a8", group_size=0), get_layout("quantvla", family="pi"))
    ctx = method_context(policy, copy.deepcopy(policy.model), qcfg, None, batches,
                         log=lambda *_: None)
    return policy, ctx


def test_units_pair_gate_and_up():
    names = ["a.q_proj", "m.gate_proj", "m.up_proj", "m.down_proj", "n.up_proj"]
    assert units_of(names) == [("a.q_proj",), ("m.gate_proj", "m.up_proj"),
                               ("m.down_proj",), ("n.up_proj",)]


def test_oracle_never_reads_recorded_actions(micro):
    """Batches carrying a poisoned (NaN, read-guarded) action field give the clean costs."""
    policy, ctx = micro
    schemes = option_schemes(ctx)
    units = [(GATE, GATE.replace("gate", "up")), ("backbone.layers.0.self_attn.v_proj",)]
    _, clean = unit_errors(ctx, units, schemes)
    clean_rows = row_errors(ctx, [GATE], schemes, probes=1)
    poisoned = copy.copy(ctx)
    poisoned.batches = [Poisoned({**b, "actions": torch.full((len(b["state"]), 50, 32),
                                                             float("nan"))})
                        for b in ctx.batches]
    _, dirty = unit_errors(poisoned, units, schemes)
    dirty_rows = row_errors(poisoned, [GATE], schemes, probes=1)
    assert dirty == clean and all(math.isfinite(v) for u in clean.values() for v in u.values())
    for o in schemes:
        assert torch.equal(dirty_rows[GATE][o], clean_rows[GATE][o])


class OneRow(nn.Module):
    """The float linear with output row `row` taken from a quantized copy (finite difference)."""

    def __init__(self, linear, quantized, row):
        super().__init__()
        self.linear, self.quantized, self.row = linear, quantized, row

    def forward(self, x):
        y = self.linear(x)
        y[..., self.row] = self.quantized(x)[..., self.row]
        return y


def test_first_order_row_error_matches_the_single_row_finite_difference(micro):
    """s[c] (probes) against quantizing row c alone at W4A8 and rerunning the sampler."""
    policy, ctx = micro
    schemes = option_schemes(ctx)
    s4 = row_errors(ctx, [GATE], schemes, probes=16)[GATE]["w4a8"]
    model = copy.deepcopy(ctx.model)
    ref = ctx.sample(model, ctx.batches)
    float_gate = model.expert.layers[0].mlp.gate_proj
    q = QuantLinear.from_float(float_gate, schemes["w4a8"][GATE])
    ratios = []
    for row in torch.argsort(s4, descending=True)[:3].tolist():
        model.expert.layers[0].mlp.gate_proj = OneRow(float_gate, q, row)
        exact = action_error(ctx.sample(model, ctx.batches), ref, ctx.action_dims)
        ratios.append(float(s4[row]) / exact)
    assert all(0.5 < r < 2.0 for r in ratios), ratios


def test_qvla_quantize_spends_the_budget_and_loads(tmp_path, capsys):
    """quantize --method qvla: within 1% of the asked bytes, exact bytes as loaded, runs."""
    req = QuantizeRequest(source="pi05-tiny", calib="synthetic:8", preset="expert_mlp",
                          balance=BalanceConfig(atm=False, ohb=False), method="qvla",
                          budget=0.4, method_options={"probes": "2"})
    manifest = quantize_policy(req, tmp_path / "q", log=lambda *_: None)
    a = manifest.quantization.allocation
    assert manifest.quantization.method == "qvla" and manifest.quantization.budget == 0.4
    assert 0.99 * a["budget_bytes"] <= a["bytes"] <= a["budget_bytes"]
    assert manifest.quantization.row_blocks  # the row-level top-up ran
    model, *_ = load_artifact(tmp_path / "q")
    teacher = Policy.from_config("pi05-tiny", seed=0).model
    stored = 0
    for name in (*manifest.quantized_modules, *a["float"]):
        m = model.get_submodule(name)
        if isinstance(m, nn.Linear):
            stored += sum(p.numel() for p in teacher.get_submodule(name).parameters()) * 2
        else:
            stored += sum(t.numel() * (2 if t.is_floating_point() and not k.endswith("scale")
                                       else t.element_size())
                          for k, t in m.state_dict().items())
    assert stored == a["bytes"]
    kinds = {type(model.get_submodule(n)) for n in manifest.quantized_modules}
    assert kinds <= {QuantLinear, RowBlockLinear}
    assert stored_bytes(model) > 0
    # the deployed (fused) path runs the row blocks and agrees with the unfused load
    fused = Policy.from_artifact(tmp_path / "q")
    plain = Policy.from_artifact(tmp_path / "q", fuse=False)
    obs = list(open_buffer_for(fused, "synthetic:2"))[0]
    a_fused, a_plain = fused.infer(obs).actions, plain.infer(obs).actions
    assert abs(a_fused - a_plain).max() < 1e-4
    from quantvla_ros.cli.main import main

    assert main(["inspect", "--artifact", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert "method qvla: budget 40.00%" in out and "folded into" in out


def test_costs_cache_is_read_only_for_the_same_fingerprint(micro, tmp_path):
    """costs=FILE: a second plan with the same inputs reads the costs; other probes measure."""
    from quantvla_ros.quant.qvla import measure

    _, ctx = micro
    schemes = option_schemes(ctx)
    units = units_of(list(ctx.schemes))
    pairs = [u for u in units if len(u) == 2]
    cache = str(tmp_path / "costs.pt")
    first = measure(ctx, units, pairs, schemes, 1, cache)
    again = measure(ctx, units, pairs, schemes, 1, cache)
    assert first[2].startswith("measured") and again[2].startswith("read from")
    assert again[0].keys() == first[0].keys()
    assert all(torch.equal(again[0][u][o], first[0][u][o]) for u in first[0] for o in schemes)
    assert all(torch.equal(again[1][n][o], first[1][n][o]) for n in first[1] for o in schemes)
    assert measure(ctx, units, pairs, schemes, 2, cache)[2].startswith("measured")


@pytest.fixture(scope="module")
def tiny():
    """pi05-tiny, the expert MLPs at W4A8, 6 synthetic frames in batches of 3."""
    policy = Policy.from_config("pi05-tiny", seed=0)
    batches = prepare_batches(policy, list(open_buffer_for(policy, "synthetic:6")), 3)
    qcfg = QuantConfig(parse_bits("w4a8"), get_layout("expert_mlp", family="pi"))
    ctx = method_context(policy, copy.deepcopy(policy.model), qcfg, 0.4, batches,
                         log=lambda *_: None)
    return ctx


def test_frame_errors_reduce_to_the_pooled_and_the_median_cost(tiny):
    """Per-frame errors: their mean is the pooled mse (the default cost), median per frame."""
    ctx = tiny
    schemes = option_schemes(ctx)
    unit = (GATE, GATE.replace("gate", "up"))
    ref, pooled = unit_errors(ctx, [unit], schemes)
    _, median = unit_errors(ctx, [unit], schemes, cost="median")
    model = copy.deepcopy(ctx.model)
    for n in unit:
        _set_module(model, n, QuantLinear.from_float(model.get_submodule(n),
                                                     schemes["w4a8"][n]))
    actions = ctx.sample(model, ctx.batches)
    frames = frame_errors(actions, ref, ctx.action_dims)
    assert frames.shape == (6,) and len({float(f) for f in frames}) == 6
    assert math.isclose(pooled[unit]["w4a8"], action_error(actions, ref, ctx.action_dims),
                        rel_tol=1e-12)
    assert median[unit]["w4a8"] == float(frames.median()) == reduce_frames(frames, "median")
    assert median[unit]["w4a8"] != pooled[unit]["w4a8"]
    with pytest.raises(ValueError, match="pooled or median"):
        reduce_frames(frames, "mean")


def test_median_and_pooled_costs_come_from_one_measurement(tiny, tmp_path):
    """cost=median reads the per-frame errors cost=pooled cached; each records the other."""
    from quantvla_ros.quant.qvla import METHOD

    cache = str(tmp_path / "costs.pt")
    plans = {}
    for cost in ("pooled", "median"):
        ctx = copy.copy(tiny)
        ctx.options = {"costs": cache, "probes": "1", "cost": cost}
        plans[cost] = METHOD.plan(ctx).record
    assert plans["pooled"]["costs"].startswith("measured")
    assert plans["median"]["costs"].startswith("read from")
    assert [plans[c]["cost_reduction"] for c in plans] == ["pooled", "median"]
    for p, m in zip(plans["pooled"]["units"], plans["median"]["units"], strict=True):
        assert p["other_cost"] == {"w8a8": m["w8a8"], "w4a8": m["w4a8"]}
        assert m["other_cost"] == {"w8a8": p["w8a8"], "w4a8": p["w4a8"]}
    assert any(p["w4a8"] != m["w4a8"] for p, m in zip(plans["pooled"]["units"],
                                                         plans["median"]["units"], strict=True))
    for record in plans.values():
        assert 0.99 * tiny.budget_bytes <= record["planned_bytes"] <= tiny.budget_bytes
    ctx = copy.copy(tiny)
    ctx.options = {"costs": cache, "cost": "mean"}
    with pytest.raises(ValueError, match="cost is pooled or median"):
        METHOD.plan(ctx)


def test_first_order_rows_come_from_the_family_hook(micro):
    """pi offers `grad_chunk`; a family without one says so, and QVLA gets no row errors."""
    from quantvla_ros.quant.sensitivity import supports_row_errors
    from quantvla_ros.runtime.families import FAMILIES

    _, ctx = micro
    assert ctx.grad_chunk is not None and supports_row_errors(ctx)
    assert FAMILIES["pi"].supports_grad_chunk
    for name in ("groot", "smolvla"):
        family = FAMILIES[name]()
        assert not family.supports_grad_chunk
        with pytest.raises(NotImplementedError, match="no first-order row errors"):
            family.grad_chunk(None, {})
    without = copy.copy(ctx)
    without.grad_chunk = None
    assert not supports_row_errors(without)

"""--method / --budget plumbing: row-blocked linears, permutation folding, manifest v4, bytes.

A fixed-plan method stands in for QVLA / DA-PTQ so the plumbing is tested on its own.
"""

import copy

import pytest
import torch
from torch import nn

from quantvla_ros.models.build import random_model
from quantvla_ros.models.pi.config import get_config
from quantvla_ros.quant.artifact import load_artifact
from quantvla_ros.quant.balance import BalanceConfig
from quantvla_ros.quant.budget import option_bytes
from quantvla_ros.quant.footprint import stored_bytes
from quantvla_ros.quant.manifest import METHOD_VERSION, ArtifactManifest
from quantvla_ros.quant.plan import Plan, RowBlocks
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.row_blocks import RowBlockLinear, fold_permutation
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.workflows import methods
from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy

W8, W4 = parse_bits("w8a8"), parse_bits("w4a8")
OFF = BalanceConfig(atm=False, ohb=False)


@pytest.mark.parametrize("consumer", [None, "next"])
def test_row_blocks_equal_each_blocks_own_quantlinear(consumer):
    """Each block's outputs are its rows' QuantLinear outputs (same int8 activations)."""
    torch.manual_seed(0)
    lin = nn.Linear(256, 96, bias=True)
    perm = torch.randperm(96)
    spec = RowBlocks(40, W8, W4, consumer)
    src = lin
    if consumer is not None:  # the caller folded the permutation already
        src = copy.deepcopy(lin)
        src.weight.data, src.bias.data = lin.weight.data[perm], lin.bias.data[perm]
    m = RowBlockLinear.from_float(src, spec, perm)
    x = torch.randn(3, 5, 256)
    y = m(x)
    ref_rows = []
    for rows, scheme in ((perm[:40], W8), (perm[40:], W4)):
        part = nn.Linear(256, len(rows), bias=True)
        part.weight.data, part.bias.data = lin.weight.data[rows], lin.bias.data[rows]
        ref_rows.append(QuantLinear.from_float(part, scheme)(x))
    ref = torch.cat(ref_rows, -1)
    if consumer is None:  # outputs come back in the original order
        ref = ref[..., torch.argsort(perm)]
    assert y.shape == (3, 5, 96)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-5)
    # bytes as stored: both blocks, the bias at bf16, the index only without a consumer
    want = (QuantLinear(256, 40, W8).weight_q.numel() + 40 * 4
            + stored_bytes(QuantLinear(256, 56, W4)) + 96 * 2
            + (96 * 4 if consumer is None else 0))
    assert option_bytes(lin, spec) == want


def test_folded_gate_up_permutation_keeps_the_float_actions():
    """Permuting gate / up rows and down's columns leaves the float chunk unchanged (1e-6)."""
    model = random_model(get_config("pi05-tiny"), seed=0).eval()
    folded = copy.deepcopy(model)
    mlp = "expert.layers.0.mlp"
    n = folded.get_submodule(f"{mlp}.gate_proj").out_features
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    fold_permutation(folded, [f"{mlp}.gate_proj", f"{mlp}.up_proj"], f"{mlp}.down_proj", perm)
    assert not torch.equal(folded.get_submodule(f"{mlp}.gate_proj").weight,
                           model.get_submodule(f"{mlp}.gate_proj").weight)
    from quantvla_ros.runtime.policy import Policy
    from quantvla_ros.workflows.quantize import open_buffer_for, prepare_batches

    policy = Policy.from_config("pi05-tiny", seed=0)
    buffer = open_buffer_for(policy, "synthetic:3")
    batches = prepare_batches(policy, list(buffer), 3)
    a = policy.family.sample(model, batches)
    b = policy.family.sample(folded, batches)
    assert (a - b).abs().max() <= 1e-6


class FixedPlan:
    """A stand-in method: expert layer 0's gate / up as row blocks, one linear kept bf16."""

    name = "fixed"

    def plan(self, ctx):
        mlp = "expert.layers.0.mlp"
        n = ctx.model.get_submodule(f"{mlp}.gate_proj").out_features
        perm = torch.arange(n).flip(0)
        rb = RowBlocks(n // 4, W8, W4, f"{mlp}.down_proj")
        return Plan(layers={"expert.layers.1.mlp.down_proj": W8},
                    keep_float=("backbone.layers.0.self_attn.k_proj",),
                    row_blocks={f"{mlp}.gate_proj": rb, f"{mlp}.up_proj": rb},
                    permutations={f"{mlp}.gate_proj": perm, f"{mlp}.up_proj": perm},
                    record={"solver": "fixed"})

    def refine(self, ctx, student, plan):
        return {"touched": 0}


def test_fixed_plan_artifact_round_trip(tmp_path, monkeypatch):
    """A plan's schemes, bf16 linears and row blocks reach the manifest (v4) and load back."""
    monkeypatch.setattr(methods, "method_named", lambda name: FixedPlan())
    req = QuantizeRequest(source="pi05-tiny", calib="synthetic:4", balance=OFF,
                          method="fixed", budget=0.5)
    manifest = quantize_policy(req, tmp_path / "a", log=lambda *_: None)
    q = manifest.quantization
    assert manifest.to_dict()["format_version"] == METHOD_VERSION
    assert "backbone.layers.0.self_attn.k_proj" not in manifest.quantized_modules
    assert q.allocation["float"] == ["backbone.layers.0.self_attn.k_proj"]
    assert q.allocation["refine"] == {"touched": 0}
    assert q.budget == 0.5 and q.allocation["budget_bytes"] == int(0.5 * q.allocation[
        "bf16_bytes"])
    back = ArtifactManifest.read(tmp_path / "a").quantization
    assert back.row_blocks == q.row_blocks and back.method == "fixed"
    model, *_ = load_artifact(tmp_path / "a")
    gate = model.get_submodule("expert.layers.0.mlp.gate_proj")
    assert isinstance(gate, RowBlockLinear) and gate.out_index is None
    assert model.get_submodule("expert.layers.1.mlp.down_proj").scheme.bits == "w8a8"
    # the recorded bytes are what the loaded modules store (float remainder at bf16)
    total = 0
    teacher = random_model(get_config("pi05-tiny"), seed=0)
    for name in (*manifest.quantized_modules, "backbone.layers.0.self_attn.k_proj"):
        m = model.get_submodule(name)
        total += (option_bytes(teacher.get_submodule(name), None) if isinstance(m, nn.Linear)
                  else stored_bytes(m))
    assert total == q.allocation["bytes"]


def test_report_and_inspect_show_method_budget_and_row_blocks(tmp_path, monkeypatch, capsys):
    """The report's markdown and `inspect --artifact` name method, budget, blocks, bf16."""
    monkeypatch.setattr(methods, "method_named", lambda name: FixedPlan())
    req = QuantizeRequest(source="pi05-tiny", calib="synthetic:4", balance=OFF,
                          method="fixed", budget=0.5)
    manifest = quantize_policy(req, tmp_path / "a", log=lambda *_: None)
    from quantvla_ros.cli.main import main
    from quantvla_ros.quant.manifest import method_summary
    from quantvla_ros.workflows.report_render import to_markdown

    err = {"rel_l2_vs_displacement": 0.1, "sqnr_db": 20.0, "robot_rms_per_joint": [0.1],
           "robot_max_abs_per_joint": [0.2], "rel_l2_vs_actions_incl_noise": 0.05,
           "per_sample": [], "per_step_rel_l2_vs_displacement": []}
    r = {"artifact": "a", "bits": "w4a8", "preset": "quantvla", "source": {"model": "m"},
         "parts": manifest.parts_summary(), **method_summary(manifest),
         "calibration": {"held_out_samples": 1, "spec": "synthetic:4", "synthetic": True},
         "action_error": err, "action_error_without_balance": err, "layers": [],
         "per_step_after": []}
    text = to_markdown(r)
    assert "- method: fixed, budget 50.00% of the layout's bf16 bytes" in text
    assert "row-blocks w8a8 + w4a8 rows (2)" in text
    assert ("- `expert.layers.0.mlp.gate_proj`: w8a8 per-channel rows [0, 64) + w4a8 g128 "
            "rest (permutation folded into expert.layers.0.mlp.down_proj)") in text
    assert "- bf16: `backbone.layers.0.self_attn.k_proj`" in text
    assert main(["inspect", "--artifact", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "method fixed: budget 50.00%" in out and "kept bf16: 1 modules at bf16" in out

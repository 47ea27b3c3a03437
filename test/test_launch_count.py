"""`quantvla bench launches`: the counter itself, its report, and the launch budget.

Counts run on the meta device (no memory, no compute), so they are exact and fast. Before
the fusions a pi0.5 denoise step made 58 launches per layer (bf16, 1,100 at 18 layers); the
budget asserted here is what the fused path makes.
"""

import json

import pytest
import torch

from quantvla_ros.cli.main import main
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.workflows.launch_count import count_launches, counting


def test_counter_counts_kernels_not_views_and_flags_host_copies():
    x = torch.empty(4, 8, device="meta")
    with counting() as c:
        y = x.view(2, 16).t().unsqueeze(0).expand(3, 16, 2)  # views only
        z = torch.empty_like(x)  # an allocation
        w = x + z  # one kernel
        torch.nn.functional.scaled_dot_product_attention(  # one fused kernel
            x[None, None], x[None, None], x[None, None])
        h = torch.ones(3).to("meta")  # host tensor copied to the device
    assert y.is_meta and w.is_meta and h.is_meta
    assert c.ops == {"aten:add": 1, "kernel:sdpa": 1, "aten:_to_copy": 1}
    assert c.h2d == 1


@pytest.fixture(scope="module")
def tiny():
    return count_launches("pi05-tiny", ["bf16", "w4a8", "w4a4"], verbose=True)


def test_report_fields_add_up(tiny):
    assert tiny["depth"] == 2 and tiny["num_steps"] == 10
    for precision, row in tiny["precisions"].items():
        for part in ("prefix", "denoise_step", "chunk_setup"):
            r = row[part]
            extra = r.get("per_vision_layer", 0) * tiny["vision_depth"]
            assert r["total"] == r["fixed"] + tiny["depth"] * r["per_layer"] + extra, part
        assert row["chunk_total"] == (row["prefix"]["total"] + row["chunk_setup"]["total"]
                                      + 10 * row["denoise_step"]["total"])
        assert sum(row["step_ops_per_layer"].values()) == row["denoise_step"]["per_layer"]
        assert row["h2d_copies_after_warmup"] == 0, precision  # graph capture stays legal


def test_denoise_step_fits_the_launch_budget(tiny):
    """<= 200 launches per step at 18 layers needs <= 10 per layer and a small fixed part."""
    bf16, w4a8 = tiny["precisions"]["bf16"], tiny["precisions"]["w4a8"]
    # norm, q/k/v GEMM, RoPE + KV write, attention, o_proj, norm, gate/up, GeGLU, down
    assert bf16["step_ops_per_layer"] == {
        "aten:mm": 4, "kernel:meta.add_norm": 2, "kernel:meta.geglu": 1,
        "kernel:meta.rope_qkv": 1, "kernel:sdpa": 1}
    # the quantized MLP: add + adaRMS + int8 in one kernel, then gate/up, act quant, down
    assert w4a8["step_ops_per_layer"]["kernel:meta.add_norm_q8"] == 1
    for row in (bf16, w4a8):
        step = row["denoise_step"]
        assert step["per_layer"] <= 10 and step["fixed"] <= 10
        assert step["fixed"] + 18 * step["per_layer"] <= 200
        assert row["chunk_setup"]["per_layer"] == 0  # the suffix context: once per chunk


def test_cli_json(capsys):
    assert main(["bench", "launches", "--model", "pi05-tiny", "--precision", "bf16",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["precisions"]) == {"bf16"}
    assert {"fixed", "per_layer", "total"} <= set(r["precisions"]["bf16"]["denoise_step"])


@torch.no_grad()
def test_w4a4_forward_copies_nothing_from_the_host():
    """The Hadamard matrix is cached per device: only the first forward uploads it."""
    q = QuantLinear(256, 128, parse_bits("w4a4"), device="meta")
    assert q.hadamard_block
    x = torch.empty(3, 256, device="meta")
    with counting() as first:
        q(x)
    with counting() as again:
        y = q(x)
    assert y.shape == (3, 128) and first.h2d <= 1 and again.h2d == 0

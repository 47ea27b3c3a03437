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


def _check_sums(result):
    depths = result["depths"]
    for precision, row in result["precisions"].items():
        for part in ("prefix", "denoise_step", "chunk_setup"):
            r = row[part]
            assert set(r["per_layer"]) == set(depths), part
            assert r["total"] == r["fixed"] + sum(depths[k] * n
                                                  for k, n in r["per_layer"].items()), part
        assert row["chunk_total"] == (row["prefix"]["total"] + row["chunk_setup"]["total"]
                                      + result["num_steps"] * row["denoise_step"]["total"])
        for k, hist in row.get("step_ops_per_layer", {}).items():
            assert sum(hist.values()) == row["denoise_step"]["per_layer"][k], (precision, k)
        assert row["h2d_copies_after_warmup"] == 0, precision  # graph capture stays legal


def test_report_fields_add_up(tiny):
    assert tiny["depths"] == {"vision": 2, "layers": 2} and tiny["num_steps"] == 10
    _check_sums(tiny)


def test_denoise_step_fits_the_launch_budget(tiny):
    """<= 200 launches per step at 18 layers needs <= 10 per layer and a small fixed part."""
    bf16, w4a8 = tiny["precisions"]["bf16"], tiny["precisions"]["w4a8"]
    # norm, q/k/v GEMM, RoPE + KV write, attention, o_proj, norm, gate/up, GeGLU, down
    assert bf16["step_ops_per_layer"]["layers"] == {
        "aten:mm": 4, "kernel:meta.add_norm": 2, "kernel:meta.geglu": 1,
        "kernel:meta.rope_qkv": 1, "kernel:sdpa": 1}
    assert bf16["step_ops_per_layer"]["vision"] == {}  # the vision tower runs once a chunk
    # the quantized MLP: add + adaRMS + int8 in one kernel, then gate/up, act quant, down
    assert w4a8["step_ops_per_layer"]["layers"]["kernel:meta.add_norm_q8"] == 1
    for row in (bf16, w4a8):
        step = row["denoise_step"]
        assert step["per_layer"]["layers"] <= 10 and step["fixed"] <= 10
        assert step["fixed"] + 18 * step["per_layer"]["layers"] <= 200
        assert row["chunk_setup"]["per_layer"]["layers"] == 0  # the suffix context: once


def test_groot_is_counted_per_stack():
    """GR00T's stacks: the backbone runs once (prefix), the VL self-attention once a chunk
    (setup), the DiT block pairs once a step; two SDPA calls per pair (cross, self)."""
    r = count_launches("groot-n15-tiny", ["bf16", "w4a8"], verbose=True)
    assert r["depths"] == {"vision": 2, "llm": 2, "vl_self_attention": 2, "dit_pair": 2}
    assert r["num_steps"] == 4
    _check_sums(r)
    for row in r["precisions"].values():
        assert set(k for k, n in row["prefix"]["per_layer"].items() if n) == {"vision", "llm"}
        assert set(k for k, n in row["chunk_setup"]["per_layer"].items() if n) == \
            {"vl_self_attention"}
        assert set(k for k, n in row["denoise_step"]["per_layer"].items() if n) == \
            {"dit_pair"}
        assert row["step_ops_per_layer"]["dit_pair"]["kernel:sdpa"] == 2


@pytest.mark.parametrize("model", ["pi05-tiny", "groot-n15-tiny", "smolvla-tiny"])
def test_cli_json(capsys, model):
    """Before: `bench launches --model groot-n15` said "unknown model" (a pi-only lookup)."""
    assert main(["bench", "launches", "--model", model, "--precision", "bf16",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["precisions"]) == {"bf16"}
    assert {"fixed", "per_layer", "total"} <= set(r["precisions"]["bf16"]["denoise_step"])
    assert main(["bench", "launches", "--model", model, "--precision", "w4a8"]) == 0
    assert "w4a8" in capsys.readouterr().out


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

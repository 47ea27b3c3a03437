"""Quantized blocks with the adaRMS modulation and the deferred residual in one kernel.

On the CPU the kernels' torch references run, whose float rows equal the float model's:
so fusing changes nothing but float summation order (tolerance 1e-5, float32).
"""

import copy

import pytest
import torch
from test_fast_path import make_inputs

from quantvla_ros.models.build import random_model
from quantvla_ros.models.pi.config import get_config
from quantvla_ros.models.pi.layers import AttentionInput, StepCondition
from quantvla_ros.quant.apply import QuantConfig, quantize_
from quantvla_ros.quant.layouts import get_layout
from quantvla_ros.quant.pi_fused import AdaNormGateUp, NormQKV, fuse_projections
from quantvla_ros.quant.scheme import parse_bits

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module", params=["w8a8", "w4a8"])
def quantized(request):
    model = random_model(get_config("pi05-tiny"), seed=5)
    quantize_(model, QuantConfig(parse_bits(request.param), get_layout("backbone_expert")))
    return model


@torch.no_grad()
def test_adaptive_norm_qkv_fuses_the_quantized_expert_attention(quantized):
    fused = copy.deepcopy(quantized)
    counts = fuse_projections(fused)
    depth = quantized.cfg.expert.depth
    assert counts["norm_qkv"] == quantized.cfg.backbone.depth - 1 + depth
    assert all(isinstance(la.attention_input, NormQKV) for la in fused.expert.layers)
    w = quantized.cfg.expert.width
    h, delta = torch.randn(2, 7, w), torch.randn(2, 7, w)
    gate = torch.rand(2, 1, w) + 0.5
    cond = torch.randn(2, w)
    want = quantized.expert.layers[0].attention_input.project(h, (delta, gate), cond)
    got = fused.expert.layers[0].attention_input.project(h, (delta, gate), cond)
    assert isinstance(quantized.expert.layers[0].attention_input, AttentionInput)
    assert torch.equal(got[0], want[0]) and torch.equal(got[4], want[4])  # h and the gate
    for a, b in zip(got[1:4], want[1:4], strict=True):
        torch.testing.assert_close(a, b, **TOL)


@torch.no_grad()
def test_fused_chunk_equals_the_unfused_quantized_chunk(quantized):
    fused = copy.deepcopy(quantized)
    fuse_projections(fused)
    inputs = make_inputs(quantized.cfg)
    torch.testing.assert_close(fused.sample_actions(*inputs, num_steps=3),
                               quantized.sample_actions(*inputs, num_steps=3), **TOL)


@torch.no_grad()
def test_adarms_gate_up_takes_precomputed_modulation_and_residual(quantized):
    """The precomputed modulation gives the block the same rows as the condition vector."""
    fused = copy.deepcopy(quantized)
    fuse_projections(fused)
    block = fused.expert.layers[1].mlp_block
    assert isinstance(block, AdaNormGateUp)
    w = quantized.cfg.expert.width
    h, delta, cond = torch.randn(1, 5, w), torch.randn(1, 5, w), torch.randn(1, w)
    step = StepCondition({block.norm: block.norm.modulation(cond, h.dtype)})
    want = quantized.expert.layers[1].mlp_block.deferred(h, (delta, None), cond)
    for c in (cond, step):
        got = block.deferred(h, (delta, None), c)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1][1], want[1][1])
        torch.testing.assert_close(got[1][0], want[1][0], **TOL)

"""Fused q/k/v (and k/v) GEMMs carry the projections' biases (issue 21: DA-PTQ's CSRC d).

CSRC folds a per-channel bias into the backbone's k / v projections only; the fused GEMM
concatenates q / k / v biases with zeros for q, so the fused output equals the unfused one
(float32, pi05-tiny, 1e-6). The same for the float fast path's concatenated projections.
"""

import copy

import pytest
import torch
from test_fast_path import make_inputs

from quantvla_ros.models.build import random_model
from quantvla_ros.models.pi.config import get_config
from quantvla_ros.quant.apply import QuantConfig, quantize_
from quantvla_ros.quant.layouts import get_layout
from quantvla_ros.quant.pi_fused import NormKV, NormQKV, fuse_projections
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.runtime.families.pi_fast_path import (
    FusedAttentionInput,
    prepare_for_inference,
)

TOL = dict(atol=1e-6, rtol=1e-6)


def _bias_backbone_kv(model, seed=1):
    """Give every backbone k_proj / v_proj a bias, as CSRC's d does (q keeps none)."""
    g = torch.Generator().manual_seed(seed)
    for layer in model.backbone.layers:
        attn = layer.attention_input.attn
        for lin in (attn.k_proj, attn.v_proj):
            b = torch.randn(lin.out_features, generator=g) * 0.5
            if isinstance(lin, torch.nn.Linear):
                lin.bias = torch.nn.Parameter(b, requires_grad=False)
            else:
                lin.bias = b
    return model


@pytest.fixture(scope="module", params=["w8a8", "w4a8"])
def biased(request):
    model = random_model(get_config("pi05-tiny"), seed=5)
    quantize_(model, QuantConfig(parse_bits(request.param), get_layout("backbone_expert")))
    return _bias_backbone_kv(model)


@torch.no_grad()
def test_biased_kv_projections_still_fuse(biased):
    fused = copy.deepcopy(biased)
    counts = fuse_projections(fused)
    depth = biased.cfg.backbone.depth
    assert counts["norm_qkv"] == depth - 1 + biased.cfg.expert.depth
    assert counts["norm_kv"] == 1
    layers = fused.backbone.layers
    assert all(isinstance(la.attention_input, NormQKV) for la in layers[:-1])
    assert isinstance(layers[-1].attention_input, NormKV)
    q_rows = biased.backbone.layers[0].attention_input.attn.q_proj.out_features
    bias = layers[0].attention_input.proj.bias
    assert torch.equal(bias[:q_rows], torch.zeros(q_rows))  # q has none: zeros
    assert fused.expert.layers[0].attention_input.proj.bias is None  # none anywhere


@torch.no_grad()
def test_fused_biased_qkv_equals_unfused(biased):
    fused = copy.deepcopy(biased)
    fuse_projections(fused)
    w = biased.cfg.backbone.width
    h, delta = torch.randn(2, 7, w), torch.randn(2, 7, w)
    for i in range(biased.cfg.backbone.depth - 1):
        assert isinstance(fused.backbone.layers[i].attention_input, NormQKV)
        want = biased.backbone.layers[i].attention_input.project(h, (delta, None), None)
        got = fused.backbone.layers[i].attention_input.project(h, (delta, None), None)
        for a, b in zip(got[1:4], want[1:4], strict=True):
            torch.testing.assert_close(a, b, **TOL)
    assert isinstance(fused.backbone.layers[-1].attention_input, NormKV)
    want = biased.backbone.layers[-1].attention_input.project_kv(h, (delta, None), None)
    got = fused.backbone.layers[-1].attention_input.project_kv(h, (delta, None), None)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@torch.no_grad()
def test_fused_biased_chunk_equals_unfused(biased):
    fused = copy.deepcopy(biased)
    assert fuse_projections(fused)["norm_kv"] == 1
    inputs = make_inputs(biased.cfg)
    torch.testing.assert_close(fused.sample_actions(*inputs, num_steps=3),
                               biased.sample_actions(*inputs, num_steps=3), **TOL)


@torch.no_grad()
def test_float_fast_path_concatenates_biases():
    model = _bias_backbone_kv(random_model(get_config("pi05-tiny"), seed=3))
    fast = copy.deepcopy(model)
    prepare_for_inference(fast)
    block = fast.backbone.layers[0].attention_input
    assert isinstance(block, FusedAttentionInput) and block.weight is not None
    assert block.bias is not None
    inputs = make_inputs(model.cfg)
    torch.testing.assert_close(fast.sample_actions(*inputs, num_steps=3),
                               model.sample_actions(*inputs, num_steps=3), **TOL)

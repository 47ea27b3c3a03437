"""Quantizers and QuantLinear: error bounds, fake-quant equality, exact accumulators."""

import pytest
import torch
from torch import nn

from quantvla_ros.kernels import reference
from quantvla_ros.quant import hadamard
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.quantizers import dequantize_weight, quantize_weight, search_clip
from quantvla_ros.quant.scheme import QuantScheme, parse_bits


def linear(k=256, n=48, bias=True, seed=0):
    torch.manual_seed(seed)
    m = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        m.weight.mul_(torch.rand(n, 1) * 3)  # channels of different ranges
        m.weight[:, 7] *= 3  # and a heavier input channel
    return m


@pytest.mark.parametrize("bits,group", [(8, None), (4, None), (4, 128), (4, 64)])
def test_weight_round_trip_error_bound(bits, group):
    w = linear().weight.detach()
    q, s = quantize_weight(w, bits, group)
    qmax = {8: 127, 4: 7}[bits]
    assert q.dtype == torch.int8 and q.abs().max() <= qmax
    assert s.shape == ((48,) if group is None else (48, 256 // group))
    err = (dequantize_weight(q, s, group) - w).abs()
    per_elem_scale = s[:, None] if group is None else s.repeat_interleave(group, 1)
    assert torch.all(err <= per_elem_scale / 2 + 1e-7)  # round to nearest: half a step


def test_int4_pack_unpack_exact():
    q = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 4)
    assert torch.equal(reference.unpack_int4(reference.pack_int4(q)), q)
    packed = reference.pack_int4(torch.tensor([[-1, 7]], dtype=torch.int8))
    assert packed.item() == 0x7F  # low nibble = even k (-1 -> 0xF), high nibble = odd k


def test_clip_search_never_worse_than_no_clip():
    m = linear()
    x = torch.randn(64, 256)
    w = m.weight.detach()
    clip = search_clip(w, x, 4, 128)
    assert clip.shape == (48,) and torch.all((clip > 0.6) & (clip <= 1.0))

    def err(c):
        q, s = quantize_weight(w, 4, 128, c)
        return (x @ dequantize_weight(q, s, 128).t() - x @ w.t()).pow(2).sum(0)

    assert torch.all(err(clip) <= err(None) + 1e-6)
    # and it gains: int4 round-to-nearest of Gaussian-like weights wastes range on the tails
    assert (clip < 1).sum() > 8 and err(clip).sum() < 0.9 * err(None).sum()


def test_clip_search_clips_outlier_heavy_weights():
    """One outlier per channel stretches the int4 grid: the search clips it, and must gain.

    A search that returned 1 everywhere (a no-op) fails both the ratio and the strict MSE
    checks.
    """
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(32, 256, generator=gen)
    w[torch.arange(32), torch.randint(0, 256, (32,), generator=gen)] *= 8.0  # outliers
    x = torch.randn(128, 256, generator=gen)
    clip = search_clip(w, x, 4, None)

    def err(c):
        q, s = quantize_weight(w, 4, None, c)
        return (x @ dequantize_weight(q, s, None).t() - x @ w.t()).pow(2).sum(0)

    assert torch.all(clip < 1.0), clip
    assert torch.all(err(clip) < err(None)) and err(clip).sum() < 0.8 * err(None).sum()


def fake_quant(ql: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """Float reference: dequantize activations and weights, then a plain matmul."""
    xt = ql.transform_input(x).float()
    if ql.smooth is not None:
        xt = xt / ql.smooth
    qx, sx = (reference.quantize_per_token_int8(xt) if ql.scheme.a_bits == 8
              else reference.quantize_per_token_int4(xt))
    y = (qx.double() * sx.double()) @ ql.dequantized_weight().double().t()
    return (y + (ql.bias.double() if ql.bias is not None else 0)).float()


@pytest.mark.parametrize("bits", ["w8a8", "w4a8", "w4a4"])
def test_quant_linear_matches_fake_quant(bits):
    m = linear()
    ql = QuantLinear.from_float(m, parse_bits(bits))
    assert not any(t.is_floating_point() and t.shape == m.weight.shape for t in ql.buffers()), \
        "a float copy of the weight is stored"
    x = torch.randn(2, 37, 256)
    y = ql(x)
    assert y.shape == (2, 37, 48) and y.dtype == x.dtype
    ref = fake_quant(ql, x.reshape(-1, 256)).reshape(2, 37, 48)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    # and it approximates the float layer: SQNR (dB) well above noise
    f = m(x).detach()
    sqnr = 20 * torch.log10(f.norm() / (y - f).norm())
    assert sqnr > {"w8a8": 35, "w4a8": 17, "w4a4": 12}[bits], float(sqnr)


def test_int32_accumulators_exact():
    ql = QuantLinear.from_float(linear(bias=False), parse_bits("w4a8"))
    x = torch.randn(16, 256) * 10
    qx, _ = reference.quantize_per_token_int8(x)
    w = ql.int_weight()
    acc = reference.accumulate_grouped(qx, w, 128)  # [G, M, N] int32
    exact = torch.stack([qx[:, g:g + 128].long() @ w[:, g:g + 128].long().t()
                         for g in (0, 128)])
    assert acc.dtype == torch.int32 and torch.equal(acc.long(), exact)


def test_w8a8_beats_w4a8_beats_w4a4_on_outliers():
    m = linear()
    x = torch.randn(64, 256)
    x[:, 3] *= 20  # an activation outlier channel
    f = m(x).detach()
    errs = {b: (QuantLinear.from_float(m, parse_bits(b))(x) - f).norm() / f.norm()
            for b in ("w8a8", "w4a8", "w4a4")}
    assert errs["w8a8"] < errs["w4a8"] < 0.2
    plain = QuantLinear.from_float(m, parse_bits("w4a4", hadamard=False))
    # the Hadamard rotation is what keeps int4 activations usable with outliers
    assert errs["w4a4"] < (plain(x) - f).norm() / f.norm()


def test_hadamard_is_orthonormal():
    x = torch.randn(5, 256, dtype=torch.float64)
    y = hadamard.rotate(x, 128)
    torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1))
    # H is symmetric, so H H = I (rotate computes in float32)
    torch.testing.assert_close(hadamard.rotate(y, 128), x, atol=1e-5, rtol=1e-5)


def test_output_channel_scaling_folds_into_scales():
    m = linear()
    ql = QuantLinear.from_float(m, parse_bits("w4a8"))
    x = torch.randn(4, 256)
    before = ql(x)
    f = torch.linspace(0.5, 1.5, 48)
    ql.scale_output_channels(f)
    torch.testing.assert_close(ql(x), before * f, rtol=1e-5, atol=1e-5)


def test_bad_schemes_rejected():
    with pytest.raises(ValueError, match="unsupported bits 'w3a8'"):
        parse_bits("w3a8")
    with pytest.raises(ValueError, match="unsupported bits w8a4"):
        QuantScheme(w_bits=8, a_bits=4)
    with pytest.raises(ValueError, match="not a multiple of group_size"):
        QuantLinear(100, 8, parse_bits("w4a8"))


@pytest.mark.parametrize("bits", ["w8a8", "w4a8"])
def test_fused_gate_up_equals_separate_projections(bits, monkeypatch):
    from quantvla_ros.kernels import dispatch
    from quantvla_ros.models.pi.layers import GeGLU
    from quantvla_ros.quant.pi_fused import FusedGeGLU, fusable

    torch.manual_seed(0)
    mlp = GeGLU(256, 384)
    for name in ("gate_proj", "up_proj", "down_proj"):
        setattr(mlp, name, QuantLinear.from_float(getattr(mlp, name), parse_bits(bits)))
    assert fusable([mlp.gate_proj, mlp.up_proj])
    fused = FusedGeGLU(mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    x = torch.randn(3, 50, 256)
    y_sep = mlp(x)
    calls = []
    real = dispatch.gate_up
    monkeypatch.setattr(dispatch, "gate_up", lambda *a, **k: calls.append(1) or real(*a, **k))
    y_fused = fused(x)
    torch.testing.assert_close(y_fused, y_sep, rtol=1e-5, atol=1e-5)
    assert calls == [1]  # one fused GEMM for gate and up
    assert fused.weight_q.shape[0] == 2 * 384


@pytest.mark.parametrize("name,bits,expected", [
    ("pi05-tiny", "w8a8", {"norm_qkv": 1, "norm_kv": 1, "norm_gate_up": 1, "gate_up": 2}),
    ("pi05-tiny", "w4a8", {"norm_qkv": 1, "norm_kv": 1, "norm_gate_up": 1, "gate_up": 2}),
    ("pi0-tiny", "w4a8", {"norm_qkv": 1, "norm_kv": 1, "norm_gate_up": 3, "gate_up": 0}),
    ("pi05-tiny", "w4a4", {"norm_qkv": 0, "norm_kv": 0, "norm_gate_up": 0, "gate_up": 0}),
])
def test_fused_model_equals_unfused(name, bits, expected):
    """Norm + quantization + one GEMM per input gives the unfused model's chunk."""
    import copy
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_models import make_inputs

    from quantvla_ros.models.build import random_model
    from quantvla_ros.models.pi.config import get_config
    from quantvla_ros.quant.apply import QuantConfig, quantize_
    from quantvla_ros.quant.layouts import get_layout
    from quantvla_ros.quant.pi_fused import fuse_projections

    model = random_model(get_config(name), seed=0)
    quantize_(model, QuantConfig(parse_bits(bits), get_layout("quantvla")))
    fused = copy.deepcopy(model)
    assert fuse_projections(fused) == expected
    if expected["norm_qkv"]:  # no second copy kept: the float q/k/v left the layer
        assert not hasattr(fused.backbone.layers[0].self_attn, "q_proj")
        names = [n for n, _ in fused.named_modules()]
        assert "backbone.layers.0.self_attn.q_proj" not in names
        assert "backbone.layers.0.input_layernorm" not in names
    # no submodule slot is left None, and the fused tensors are not stored twice
    assert not any(child is None for m in fused.modules() for child in m._modules.values())

    def nbytes(m):
        return sum(t.numel() * t.element_size() for t in m.state_dict().values())

    assert nbytes(fused) <= nbytes(model)
    images, im, tok, tm, noise, state = make_inputs(model.cfg)
    ref = model.sample_actions(images, im, tok, tm, noise, state)
    out = fused.sample_actions(images, im, tok, tm, noise, state)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # fusing again finds nothing left to fuse and changes nothing
    assert fuse_projections(fused) == {"norm_qkv": 0, "norm_kv": 0, "norm_gate_up": 0,
                                       "gate_up": 0}
    torch.testing.assert_close(fused.sample_actions(images, im, tok, tm, noise, state), out,
                               rtol=0, atol=0)


@pytest.mark.parametrize("name,bits", [("pi05-tiny", "w8a8"), ("pi0-tiny", "w4a8")])
def test_fusion_swaps_whole_blocks(name, bits):
    """Fusion replaces each layer's attention-input and MLP blocks, keeping their contracts."""
    from quantvla_ros.models.build import random_model
    from quantvla_ros.models.pi.config import get_config
    from quantvla_ros.models.pi.layers import AttentionInput, MLPBlock
    from quantvla_ros.quant.apply import QuantConfig, quantize_
    from quantvla_ros.quant.layouts import get_layout
    from quantvla_ros.quant.pi_fused import (
        AdaNormGateUp,
        NormGateUp,
        NormKV,
        NormQKV,
        fuse_projections,
    )

    model = random_model(get_config(name), seed=0)
    quantize_(model, QuantConfig(parse_bits(bits), get_layout("quantvla")))
    layers = [*model.backbone.layers, *model.expert.layers]
    assert all(isinstance(la.attention_input, AttentionInput) for la in layers)
    assert all(isinstance(la.mlp_block, MLPBlock) for la in layers if not la.kv_only)
    last = model.backbone.layers[-1]
    assert last.kv_only and not hasattr(last, "mlp_block")  # never executed: never built
    before_kv = last.attention_input.kv(hb := torch.randn(2, 7, model.cfg.backbone.width), None)
    torch.manual_seed(0)
    cfg = model.cfg
    he = torch.randn(2, 7, cfg.expert.width)
    cond = torch.randn(2, cfg.expert.width) if cfg.variant == "pi05" else None
    first, layer = model.backbone.layers[0], model.expert.layers[0]
    before_attn = first.attention_input(hb, None)
    before_mlp = layer.mlp_block(he, cond)
    fuse_projections(model)
    for la in model.backbone.layers[:-1]:
        assert isinstance(la.attention_input, NormQKV)
        assert isinstance(la.mlp_block, NormGateUp)
    assert isinstance(last.attention_input, NormKV)
    for a, b in zip(last.attention_input.kv(hb, None), before_kv, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for la in model.expert.layers:  # the quantvla layout keeps the expert's attention float
        assert isinstance(la.attention_input, AttentionInput)
        assert isinstance(la.mlp_block, AdaNormGateUp if cfg.variant == "pi05" else NormGateUp)
    after_attn = first.attention_input(hb, None)
    assert len(after_attn) == 4 and after_attn[3] is None and before_attn[3] is None
    for a, b in zip(after_attn[:3], before_attn[:3], strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    after_mlp = layer.mlp_block(he, cond)
    assert after_mlp.shape == before_mlp.shape
    torch.testing.assert_close(after_mlp, before_mlp, rtol=1e-4, atol=1e-4)

"""quantize_policy paths: smoothing, clip search and balance factors as the artifact holds them.

Each test quantizes pi05-tiny through `quantize_policy`, loads the artifact and checks it
against the float teacher the named source rebuilds (random weights, seed 0).
"""

import copy

import pytest
import torch

from quantvla_ros.kernels.int4_layout import GROUP_SCALE_MAX
from quantvla_ros.models.build import random_model
from quantvla_ros.models.pi.config import get_config
from quantvla_ros.quant.apply import QuantConfig, quantize_
from quantvla_ros.quant.artifact import load_artifact
from quantvla_ros.quant.balance import BalanceConfig
from quantvla_ros.quant.layouts import get_layout
from quantvla_ros.quant.pi_balance import fold_atm, fold_ohb
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.quantizers import CLIP_RATIOS, QMAX
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.runtime.families.pi import PiFamily
from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy

CALIB = "synthetic:4"
OFF = BalanceConfig(atm=False, ohb=False)


def _quantize(tmp_path, name, **kw):
    req = QuantizeRequest(source="pi05-tiny", calib=CALIB, **kw)
    manifest = quantize_policy(req, tmp_path / name, log=lambda *_: None)
    model, *_ = load_artifact(tmp_path / name)
    return model, manifest


@pytest.fixture(scope="module")
def teacher():
    return random_model(get_config("pi05-tiny"), seed=0)


def test_smoothing_through_quantize_preserves_the_function(tmp_path, teacher):
    """Norm-folded 1/s and weight-absorbed s cancel: the block computes the teacher's MLP."""
    model, manifest = _quantize(tmp_path, "smooth", bits="w8a8", preset=None,
                                include=("expert.layers.*.mlp.*",), smooth_alpha=0.5,
                                balance=OFF)
    assert manifest.quantization.smooth_alpha == 0.5
    plain, _ = _quantize(tmp_path, "plain", bits="w8a8", preset=None,
                         include=("expert.layers.*.mlp.*",), balance=OFF)
    torch.manual_seed(0)
    width = teacher.cfg.expert.width
    for i, (t_layer, s_layer) in enumerate(zip(teacher.expert.layers, model.expert.layers,
                                               strict=True)):
        # adaRMS: (1 + scale) rows of the dense bias were divided by s
        t_bias = t_layer.post_attention_layernorm.dense.bias[:width].double()
        s_bias = s_layer.post_attention_layernorm.dense.bias[:width].double()
        s = (1 + t_bias) / (1 + s_bias)
        assert (s - 1).abs().max() > 0.05, f"layer {i}: smoothing did nothing"
        for name in ("gate_proj", "up_proj"):
            q = getattr(s_layer.mlp, name)
            assert isinstance(q, QuantLinear) and q.smooth is None  # folded into the norm
            w_t = getattr(t_layer.mlp, name).weight.double()
            step = (q.weight_scale.double() / 2)[:, None] / s[None, :]
            assert torch.all((q.dequantized_weight().double() / s[None, :] - w_t).abs()
                             <= step + 1e-7), (i, name)
        down = s_layer.mlp.down_proj  # no norm before it: the kernel divides x by `smooth`
        assert down.smooth is not None and (down.smooth - 1).abs().max() > 0.05
        w_t = t_layer.mlp.down_proj.weight.double()
        sm = down.smooth.double()
        step = (down.weight_scale.double() / 2)[:, None] / sm[None, :]
        assert torch.all((down.dequantized_weight().double() / sm[None, :] - w_t).abs()
                         <= step + 1e-7), i
        # and the whole block (norm, gate/up, down, residual) is as close to the teacher's
        # as without smoothing (a fold in the wrong basis would be off by up to s ~ 2.5x)
        h, cond = torch.randn(2, 9, width), torch.randn(2, width)
        err = {}
        with torch.no_grad():
            want = t_layer.mlp_block(h, cond)
            for key, m in (("smooth", s_layer), ("plain", plain.expert.layers[i])):
                got = m.mlp_block(h, cond)
                err[key] = float((got - want).norm() / (want - h).norm())
        assert err["smooth"] < min(0.05, 1.25 * err["plain"]), (i, err)


def test_clip_search_through_quantize_clips(tmp_path, teacher):
    """Every channel's range shrinks by one of the searched ratios, and some by less than 1."""
    model, _ = _quantize(tmp_path, "clip", bits="w4a8", preset=None,
                         include=("backbone.layers.0.*",), clip_search=True, balance=OFF)
    rtn, _ = _quantize(tmp_path, "rtn", bits="w4a8", preset=None,
                       include=("backbone.layers.0.*",), balance=OFF)
    clipped = 0
    for name, q in model.named_modules():
        if not isinstance(q, QuantLinear):
            continue
        assert name.startswith("backbone.layers.0.")
        w = teacher.get_submodule(name).weight.float()
        # W4A8's channel scale is s1 = clip * amax / (7 * GROUP_SCALE_MAX) (int4_layout.py).
        per_row = QMAX[q.scheme.w_bits] * GROUP_SCALE_MAX / w.abs().amax(-1)
        ratio = q.weight_scale * per_row
        assert all(min(abs(r - c) for c in CLIP_RATIOS) < 1e-5 for r in ratio.tolist())
        clipped += int((ratio < 1 - 1e-6).sum())
        plain = rtn.get_submodule(name).weight_scale * per_row
        torch.testing.assert_close(plain, torch.ones_like(plain), rtol=1e-5, atol=0)
    assert clipped > 0


@pytest.mark.parametrize("towers", [("expert",), ("expert", "backbone")])
def test_stored_factors_are_the_applied_ones(tmp_path, teacher, towers):
    """The manifest's alpha / beta, unfolded from the artifact, give the unbalanced student."""
    model, manifest = _quantize(tmp_path, "bal", bits="w4a8",
                                balance=BalanceConfig(band=0.0, towers=towers))
    alpha, beta = manifest.balance.alpha, manifest.balance.beta
    assert {k.split(".")[0] for k in alpha} == set(towers) and alpha.keys() == beta.keys()
    assert any(a != 1.0 for heads in alpha.values() for a in heads)
    assert any(b != 1.0 for b in beta.values())
    plain = copy.deepcopy(teacher)
    quantize_(plain, QuantConfig(parse_bits("w4a8"), get_layout("quantvla")))
    want = plain.state_dict()
    changed = {f"{t}.layers.{li}.self_attn.{p}_proj"
               for t, li in (k.split(".") for k in alpha) for p in ("q", "o")}

    got = model.state_dict()
    folded = [k for k in want if k.rsplit(".", 1)[0] in changed and not torch.equal(got[k],
                                                                                     want[k])]
    assert folded, "no balance factor was folded into the artifact"
    PiFamily().unfold_balance(model, alpha, beta)
    for key, ref in model.state_dict().items():  # exactly these factors were folded
        torch.testing.assert_close(ref, want[key], rtol=1e-6, atol=1e-9, msg=key)
    # folding the stored factors into the plain student reproduces the artifact
    again, *_ = load_artifact(tmp_path / "bal")
    with torch.no_grad():
        for key, a in alpha.items():
            t, li = key.split(".")
            attn = getattr(plain, t).layers[int(li)].self_attn
            fold_atm(attn, torch.tensor(a, dtype=torch.float64))
            fold_ohb(attn, beta[key])
    for key, ref in again.state_dict().items():
        torch.testing.assert_close(plain.state_dict()[key], ref, rtol=1e-6, atol=1e-9)

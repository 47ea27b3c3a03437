"""DA-PTQ's CSRC: fits recover known distortions, folds equal the runtime map to 1e-5."""

import copy

import pytest
import torch

from quantvla_ros.data.synthetic import synthetic_observations
from quantvla_ros.models.build import random_model
from quantvla_ros.models.pi.config import get_config
from quantvla_ros.models.pi.normalization import Normalizer
from quantvla_ros.models.pi.tokenizer import ByteTokenizer
from quantvla_ros.quant.apply import QuantConfig, quantize_
from quantvla_ros.quant.daptq_compensation import (
    ChannelMap,
    Compensated,
    CsrcConfig,
    calibrate_csrc,
    fit_map,
    fold_,
    interface_names,
)
from quantvla_ros.quant.layouts import get_layout
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.workflows.quantize import prepare_batches


@pytest.fixture(scope="module")
def setup():
    teacher = random_model(get_config("pi05-tiny"), seed=0)
    policy = Policy(teacher, Normalizer.identity(), ByteTokenizer())
    cams = {c: (224, 224) for c in teacher.cfg.cameras}
    obs = synthetic_observations(4, seed=0, cameras=cams, state_dim=8)
    student = copy.deepcopy(teacher)
    quantize_(student, QuantConfig(parse_bits("w4a8"), get_layout("quantvla")))
    return teacher, student, prepare_batches(policy, obs, batch_size=2)


def _actions(model, batches):
    with torch.no_grad():
        return torch.cat([model.sample_actions(b["images"], b["image_masks"], b["tokens"],
                                               b["token_masks"], b["noise"], b["state"])
                          for b in batches])


def test_interface_is_every_backbone_key_and_value_projection(setup):
    teacher, _, _ = setup
    depth = teacher.cfg.backbone.depth
    names = interface_names(teacher)
    assert len(names) == 2 * depth
    assert names[:2] == [f"backbone.layers.0.self_attn.{x}_proj" for x in "kv"]
    assert names[-1] == f"backbone.layers.{depth - 1}.self_attn.v_proj"  # the kv-only layer


def test_paired_fit_recovers_a_per_channel_affine_distortion():
    gen = torch.Generator().manual_seed(0)
    zf = torch.randn(4000, 6, generator=gen) * torch.tensor([1, 2, 3, 0.5, 1, 1]) + 0.3
    g0 = torch.tensor([1.2, 0.9, 1.0, 0.85, 1.1, 1.01])
    d0 = torch.tensor([0.1, -0.2, 0.0, 0.05, 0.0, 0.3])
    zq = (zf - d0) / g0  # so zf = g0 * zq + d0 exactly
    m = fit_map(zf, zq, CsrcConfig(band=0.0))
    assert torch.allclose(m.g, g0, atol=1e-5) and torch.allclose(m.d, d0, atol=1e-5)
    m = fit_map(zf, zq, CsrcConfig(solver="moments", band=0.0))
    assert torch.allclose(m.g, g0, atol=1e-4) and torch.allclose(m.d, d0, atol=1e-4)
    # clamp [0.8, 1.25] and the band snap: 1.01 -> 1 (then d is the mean gap)
    m = fit_map(zf, zq, CsrcConfig(band=0.02))
    assert m.g[5] == 1.0 and abs(float(m.d[5]) - float((zf[:, 5] - zq[:, 5]).mean())) < 1e-5
    m = fit_map(zf, zq * 2, CsrcConfig())  # g0 / 2 below the clamp
    assert torch.all(m.g >= 0.8 - 1e-7)


def test_low_rank_fit_removes_cross_channel_mixing():
    gen = torch.Generator().manual_seed(1)
    zf = torch.randn(5000, 8, generator=gen)
    u = torch.randn(8, generator=gen)
    u /= u.norm()
    v = torch.randn(8, generator=gen)
    v -= (v @ u) * u
    v /= v.norm()
    mix = torch.eye(8) + 0.5 * torch.outer(u, v)  # a rank-1 cross-channel distortion
    zq = zf @ torch.linalg.inv(mix).T  # zf = mix @ zq
    err = [float((fit_map(zf, zq, CsrcConfig(band=0.0, rank=r, ridge=1e-6)).apply(zq) - zf)
                 .norm() / zf.norm()) for r in (0, 2, 8)]
    # measured: 0.159, 0.037, 2e-7 (full rank is exact; per channel cannot undo a mix)
    assert err[0] > 0.1 and err[1] < 0.3 * err[0] and err[2] < 1e-5


def test_integer_fold_equals_runtime_map(setup):
    teacher, student, batches = setup
    runtime = copy.deepcopy(student)
    maps, rows = calibrate_csrc(teacher, runtime, batches, CsrcConfig())
    # non-trivial maps, so a wrong fold shows
    assert any(float((m.g - 1).abs().max()) > 0.02 for m in maps.values()) or \
        any(float(m.d.abs().max()) > 1e-3 for m in maps.values())
    assert all(r["error_after"] <= r["error_before"] + 1e-7 for r in rows)
    # the same maps at runtime (wrapped) and folded, each on the same input rows
    gen = torch.Generator().manual_seed(3)
    for name, m in maps.items():
        q = student.get_submodule(name)
        folded = copy.deepcopy(q)
        holder = torch.nn.Module()
        holder.lin = folded
        fold_(holder, "lin", m)
        x = torch.randn(3, 7, q.in_features, generator=gen)
        want, got = Compensated(q, m)(x), holder.lin(x)
        assert float((want - got).abs().max()) <= 1e-5 * float(want.abs().max())
    # end to end: every fold at once; later layers re-quantize their slightly different
    # inputs, so rare int8 rounding flips leave ~1e-4 (measured 1.6e-4), not float noise
    runtime, folded = copy.deepcopy(student), copy.deepcopy(student)
    for name, m in maps.items():
        parent, _, attr = name.rpartition(".")
        setattr(runtime.get_submodule(parent), attr,
                Compensated(runtime.get_submodule(name), m))
        fold_(folded, name, m)
    a_rt, a_fd, a_st = (_actions(m, batches) for m in (runtime, folded, student))
    assert float((a_rt - a_fd).abs().max()) < 1e-3
    assert float((a_st - a_fd).abs().max()) > 1e-2  # the compensation changed the actions


def test_float_fold_with_low_rank_map_equals_runtime(setup):
    teacher, _, batches = setup
    gen = torch.Generator().manual_seed(2)
    name = "backbone.layers.0.self_attn.v_proj"
    n = teacher.get_submodule(name).out_features
    m = ChannelMap(1 + 0.1 * torch.randn(n, generator=gen), 0.05 * torch.randn(n, generator=gen),
                   0.1 * torch.randn(n, 2, generator=gen), 0.1 * torch.randn(n, 2, generator=gen))
    runtime, folded = copy.deepcopy(teacher), copy.deepcopy(teacher)
    runtime.backbone.layers[0].self_attn.v_proj = Compensated(
        runtime.backbone.layers[0].self_attn.v_proj, m)
    fold_(folded, name, m)
    assert folded.get_submodule(name).bias is not None
    a_rt, a_fd, a_t = (_actions(x, batches) for x in (runtime, folded, teacher))
    assert float((a_rt - a_fd).abs().max()) < 1e-5
    assert float((a_t - a_fd).abs().max()) > 1e-4


def test_low_rank_map_does_not_fold_into_integer_weights(setup):
    _, student, _ = setup
    name = "backbone.layers.0.self_attn.k_proj"
    n = student.get_submodule(name).out_features
    m = ChannelMap(torch.ones(n), torch.zeros(n), torch.ones(n, 1), torch.ones(n, 1))
    with pytest.raises(ValueError, match="cannot fold exactly"):
        fold_(copy.deepcopy(student), name, m)

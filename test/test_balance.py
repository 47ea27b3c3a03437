"""ATM and OHB: folds equal runtime scaling, and calibration undoes injected drift."""

import copy

import pytest
import torch
from torch import nn

from quantvla_ros.data.synthetic import synthetic_observations
from quantvla_ros.models.build import random_model
from quantvla_ros.models.pi.config import get_config
from quantvla_ros.models.pi.normalization import Normalizer
from quantvla_ros.models.pi.tokenizer import ByteTokenizer
from quantvla_ros.quant.apply import QuantConfig, quantize_
from quantvla_ros.quant.balance import (
    BalanceConfig,
    CalibrationError,
    balance_ratio,
    clamp_band,
)
from quantvla_ros.quant.layouts import get_layout
from quantvla_ros.quant.pi_balance import (
    calibrate_balance,
    fold_atm,
    fold_ohb,
    measure,
    run_batches,
)
from quantvla_ros.quant.pi_stats import StatsCollector
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.workflows.quantize import prepare_batches


class ScaleOutput(nn.Module):
    """Runtime scaling of a linear's output channels (what the folds must reproduce)."""

    def __init__(self, inner, factor):
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x):
        return self.inner(x) * self.factor.to(x.dtype)


@pytest.fixture(scope="module")
def setup():
    model = random_model(get_config("pi05-tiny"), seed=0)
    policy = Policy(model, Normalizer.identity(), ByteTokenizer())
    cams = {c: (224, 224) for c in model.cfg.cameras}
    obs = synthetic_observations(4, seed=0, cameras=cams, state_dim=8)
    return model, prepare_batches(policy, obs, batch_size=4)


def test_atm_fold_equals_runtime_logit_scaling(setup):
    model, batches = setup
    alpha = torch.tensor([0.8, 1.25, 1.0, 0.9, 1.1, 1.2, 0.85, 1.05])
    folded, runtime = copy.deepcopy(model), copy.deepcopy(model)
    fold_atm(folded.expert.layers[1].self_attn, alpha)
    attn = runtime.expert.layers[1].self_attn
    attn.q_proj = ScaleOutput(attn.q_proj, alpha.repeat_interleave(attn.head_dim))
    torch.testing.assert_close(run_batches(folded, batches, None),
                               run_batches(runtime, batches, None), atol=1e-5, rtol=1e-5)
    # the per-head logit std scales by exactly alpha (logits are linear in q, RoPE included)
    base = measure(model, batches, ("expert",), [1], o_proj=False).logit_std()
    new = measure(folded, batches, ("expert",), [1], o_proj=False).logit_std()
    torch.testing.assert_close(new[("expert", 1)] / base[("expert", 1)], alpha,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("quantized", [False, True])
def test_ohb_fold_equals_runtime_scaling(setup, quantized):
    model, batches = setup
    base = copy.deepcopy(model)
    if quantized:  # o_proj quantized: beta goes into its dequantization scales
        quantize_(base, QuantConfig(parse_bits("w8a8"), get_layout("backbone_expert")))
    folded, runtime = copy.deepcopy(base), copy.deepcopy(base)
    fold_ohb(folded.expert.layers[0].self_attn, 1.2)
    attn = runtime.expert.layers[0].self_attn
    attn.o_proj = ScaleOutput(attn.o_proj, torch.tensor(1.2))
    # Float: equal to 1e-5. Quantized: rounding-level differences in the scaled output can
    # flip a downstream int8 activation by one step, so the chunk agrees to 1e-3 instead
    # (the QuantLinear-level fold itself is checked to 1e-5 in test_quant_linear).
    tol = 1e-3 if quantized else 1e-5
    torch.testing.assert_close(run_batches(folded, batches, None),
                               run_batches(runtime, batches, None), atol=tol, rtol=tol)


def test_clamp_and_neutral_band():
    cfg = BalanceConfig(clamp=(0.8, 1.25), band=0.05)
    r = clamp_band(torch.tensor([0.5, 0.97, 1.04, 1.06, 2.0]), cfg)
    assert r.tolist() == pytest.approx([0.8, 1.0, 1.0, 1.06, 1.25])
    with pytest.raises(ValueError, match="clamp range"):
        BalanceConfig(clamp=(1.1, 1.25))
    with pytest.raises(ValueError, match="at least one"):
        BalanceConfig(towers=())
    from quantvla_ros.quant.pi_balance import attention_sites  # the family knows its towers

    with pytest.raises(ValueError, match="unknown towers"):
        attention_sites(random_model(get_config("pi05-tiny")), ("vision",))


def test_calibration_removes_injected_drift(setup):
    teacher, batches = setup
    student = copy.deepcopy(teacher)
    d = student.cfg.expert.head_dim
    with torch.no_grad():  # drift: head 2 of layer 0 runs hot, layer 1's output is damped
        student.expert.layers[0].self_attn.q_proj.weight[2 * d:3 * d] *= 1.15
        student.expert.layers[1].self_attn.o_proj.weight *= 0.85
    cfg = BalanceConfig()
    result = calibrate_balance(teacher, student, batches, cfg)
    before = result["ratios"]["before"]
    assert abs(before["logit_std"]["expert.0"][2] - 1 / 1.15) < 0.02
    assert abs(before["oproj_rms"]["expert.1"] - 1 / 0.85) < 0.02
    after = result["ratios"]["after"]
    for key, heads in after["logit_std"].items():
        assert all(abs(r - 1) < cfg.band for r in heads), (key, heads)
    for key, r in after["oproj_rms"].items():
        assert abs(r - 1) < cfg.band, (key, r)
    assert result["alpha"]["expert.0"][2] == pytest.approx(1 / 1.15, abs=0.02)
    assert result["alpha"]["expert.0"][0] == 1.0  # untouched heads stay in the neutral band
    assert result["beta"]["expert.1"] == pytest.approx(1 / 0.85, abs=0.02)
    # and the actions come back towards the teacher's
    t = run_batches(teacher, batches, None)
    drifted = copy.deepcopy(teacher)
    with torch.no_grad():
        drifted.expert.layers[0].self_attn.q_proj.weight[2 * d:3 * d] *= 1.15
        drifted.expert.layers[1].self_attn.o_proj.weight *= 0.85
    err_drift = (run_batches(drifted, batches, None) - t).norm()
    err_fixed = (run_batches(student, batches, None) - t).norm()
    assert err_fixed < 0.5 * err_drift


def test_calibration_is_progressive_layer_by_layer(setup):
    """Layer 1's ratio is measured after layer 0 is corrected, not on the drifted student.

    Layer 0's drift (hot queries, loud output) changes what reaches layer 1, so a one-shot
    calibration (every ratio measured before any fold) leaves layer 1's heads about 4% off;
    the progressive one matches them (0.19% is the worst layer-0 residual, from the next
    denoising steps seeing layer 1's correction).
    """
    teacher, batches = setup
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        a0, a1 = student.expert.layers[0].self_attn, student.expert.layers[1].self_attn
        a0.o_proj.weight *= 1.6
        a0.q_proj.weight *= 1.3
        a1.q_proj.weight *= 0.85
    cfg = BalanceConfig(band=0.0, clamp=(0.5, 2.0))
    result = calibrate_balance(teacher, student, batches, cfg)
    after = result["ratios"]["after"]
    for key, heads in after["logit_std"].items():
        assert all(abs(r - 1) < 0.005 for r in heads), (key, heads)
    for key, r in after["oproj_rms"].items():
        assert abs(r - 1) < 0.005, (key, r)
    # layer 1's own drift, measured with layer 0 already corrected
    assert result["alpha"]["expert.1"] == pytest.approx([1 / 0.85] * 8, abs=0.005)


def test_backbone_balancing_removes_injected_drift(setup):
    teacher, batches = setup
    student = copy.deepcopy(teacher)
    d = student.cfg.backbone.head_dim
    with torch.no_grad():  # backbone layer 0: head 5 runs hot, the output is damped
        student.backbone.layers[0].self_attn.q_proj.weight[5 * d:6 * d] *= 1.2
        student.backbone.layers[0].self_attn.o_proj.weight *= 0.88
    cfg = BalanceConfig(towers=("expert", "backbone"))
    result = calibrate_balance(teacher, student, batches, cfg)
    assert result["alpha"]["backbone.0"][5] == pytest.approx(1 / 1.2, abs=0.01)
    assert result["alpha"]["backbone.0"][0] == 1.0
    assert result["beta"]["backbone.0"] == pytest.approx(1 / 0.88, abs=0.01)
    after = result["ratios"]["after"]
    assert all(abs(r - 1) < cfg.band for r in after["logit_std"]["backbone.0"])
    assert abs(after["oproj_rms"]["backbone.0"] - 1) < cfg.band


def test_nonfinite_or_degenerate_ratios_refused():
    cfg = BalanceConfig()
    with pytest.raises(CalibrationError, match="non-finite"):
        clamp_band(torch.tensor([1.0, float("nan")]), cfg)
    with pytest.raises(CalibrationError, match=r"expert\.3 head 2: student logit std is nan"):
        balance_ratio(torch.ones(4), torch.tensor([1.0, 1.0, float("nan"), 1.0]),
                      "expert.3", "logit std")
    with pytest.raises(CalibrationError, match=r"backbone\.0: teacher o_proj RMS is inf"):
        balance_ratio(torch.tensor(float("inf")), torch.tensor(1.0), "backbone.0", "o_proj RMS")
    with pytest.raises(CalibrationError, match="head 1: student logit std is 0"):
        balance_ratio(torch.ones(2), torch.tensor([1.0, 0.0]), "expert.0", "logit std")
    # a head dead in both models has nothing to match: factor 1
    assert balance_ratio(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]), "e.0",
                         "x").tolist() == [2.0, 1.0]


@pytest.fixture(scope="module")
def one_step():
    """pi05-tiny with one denoising step: a NaN stays where it was injected."""
    model = random_model(get_config("pi05-tiny").with_(num_steps=1), seed=0)
    policy = Policy(model, Normalizer.identity(), ByteTokenizer())
    cams = {c: (224, 224) for c in model.cfg.cameras}
    obs = synthetic_observations(2, seed=0, cameras=cams, state_dim=8)
    return model, prepare_batches(policy, obs, batch_size=2)


def test_nan_statistics_refused_with_layer_and_head(one_step):
    teacher, batches = one_step
    d = teacher.cfg.expert.head_dim
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.expert.layers[0].self_attn.q_proj.weight[3 * d, 0] = float("nan")
    with pytest.raises(CalibrationError,
                       match=r"expert\.0 head 3: student attention logit std is nan"):
        calibrate_balance(teacher, student, batches, BalanceConfig())
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.expert.layers[0].self_attn.o_proj.weight[0, 0] = float("inf")
    with pytest.raises(CalibrationError, match=r"expert\.0: student attention output RMS is"):
        calibrate_balance(teacher, student, batches, BalanceConfig())


def _count_prefix_runs(monkeypatch, run):
    """Call run(); count the vision tower's and the prefill's runs meanwhile."""
    from quantvla_ros.models.pi.model import PiModel
    from quantvla_ros.models.siglip import SiglipVision

    counts = {"vision": 0, "prefill": 0}
    vision, prefill = SiglipVision.forward, PiModel.prefill

    def counted(key, f):
        def wrapper(self, *a, **k):
            counts[key] += 1
            return f(self, *a, **k)
        return wrapper

    with monkeypatch.context() as m:
        m.setattr(SiglipVision, "forward", counted("vision", vision))
        m.setattr(PiModel, "prefill", counted("prefill", prefill))
        out = run()
    return out, counts


@pytest.mark.parametrize("towers", [("expert",), ("expert", "backbone")])
def test_cached_calibration_equals_uncached(setup, monkeypatch, towers):
    """Cached prefixes give the same factors and actions; the prefix runs far fewer times."""
    teacher, batches = setup
    batches = [{k: v[:2] for k, v in batches[0].items()}]  # two samples are enough
    base = copy.deepcopy(teacher)
    quantize_(base, QuantConfig(parse_bits("w4a8"), get_layout("quantvla")))
    cfg = BalanceConfig(band=0.0, towers=towers)
    results, calls = {}, {}
    for cache in (False, True):
        student = copy.deepcopy(base)
        results[cache], calls[cache] = _count_prefix_runs(
            monkeypatch, lambda s=student, c=cache: calibrate_balance(teacher, s, batches, cfg,
                                                                     cache=c))
        results[cache] = (results[cache], run_batches(student, batches, None))
    (ref, ref_act), (got, got_act) = results[False], results[True]
    assert ref["alpha"].keys() == got["alpha"].keys() and ref["beta"].keys() == got["beta"].keys()
    for key in ref["alpha"]:
        assert got["alpha"][key] == pytest.approx(ref["alpha"][key], abs=1e-6)
        assert got["beta"][key] == pytest.approx(ref["beta"][key], abs=1e-6)
    assert any(a != 1.0 for heads in got["alpha"].values() for a in heads)
    torch.testing.assert_close(got_act, ref_act, rtol=0, atol=1e-6)
    passes = 2 * len(teacher.expert.layers) + 2  # teacher once, student 2 x depth + 1
    assert calls[False] == {"vision": passes, "prefill": passes}
    # the prefix embedding once in all (the quantvla layout keeps vision and projector float);
    # the prefill once per model with expert-only balancing, every pass with the backbone
    assert calls[True] == {"vision": 1, "prefill": 2 if towers == ("expert",) else passes}


def test_stats_collector_streams_without_large_buffers():
    """Moments match a float64 reference; no temporary near the [B, H, S, T] logits size."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            seen = {x.untyped_storage().data_ptr() for x in tree_leaves((args, kwargs))
                    if isinstance(x, torch.Tensor)}
            for t in tree_leaves(out):  # new storage only: views of the inputs are free
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                    Largest.largest = max(Largest.largest, t.untyped_storage().nbytes())
            return out

    torch.manual_seed(0)
    b, h, s, t, d = 2, 8, 512, 512, 32
    q, k = torch.randn(b, h, s, d) + 0.3, torch.randn(b, 1, t, d)
    mask = torch.rand(b, s, t) > 0.25
    out, valid = torch.randn(b, s, 2048) * 2, torch.rand(b, s) > 0.1
    c = StatsCollector(chunk_elems=1 << 18)  # 1 MB chunks
    c.step = None
    with Largest():
        c.attention(0, 0, q, k, mask)
        c.o_proj(0, 0, out, valid)
    logits64 = b * h * s * t * 8  # what the float64 logits alone took
    assert Largest.largest <= 2 * (1 << 18) * 4 < logits64 / 8, Largest.largest
    ref = (q.double() @ k.double().transpose(-1, -2)) / d**0.5
    m = mask[:, None].expand_as(ref)
    want = torch.stack([ref[:, i][m[:, i]].std(unbiased=False) for i in range(h)])
    torch.testing.assert_close(c.logit_std()[("backbone", 0)].double(), want, rtol=1e-6,
                               atol=0)
    rms = out[valid].double().pow(2).mean().sqrt()
    assert c.oproj_rms()[("backbone", 0)] == pytest.approx(float(rms), rel=1e-6)

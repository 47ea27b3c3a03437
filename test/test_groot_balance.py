"""ATM / OHB on GR00T's DiT attention: observer, folds and progressive calibration (tiny)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from quantvla_ros.models.build import random_model
from quantvla_ros.models.registry import get_config
from quantvla_ros.quant.apply import QuantConfig, quantize_
from quantvla_ros.quant.balance import BalanceConfig
from quantvla_ros.quant.groot_balance import (
    BLOCK_KEY,
    DiTStats,
    backbone_features,
    calibrate_dit_balance,
    dit_attention,
    fold_dit_atm,
    fold_dit_ohb,
    run_head,
)
from quantvla_ros.quant.layouts import get_layout
from quantvla_ros.quant.scheme import parse_bits

CFG = get_config("groot-n15-tiny")
HEAD = CFG.action_head


@pytest.fixture(scope="module")
def teacher():
    return random_model(CFG, seed=3)


def _batches(n=2, seed=21):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for j in range(n):
        ids = torch.tensor([[1, 2] + [150] * (2 * CFG.vision.num_tokens) + [3 + i + j, 4]
                            for i in range(2)])
        out.append(dict(
            pixel_values=torch.rand(4, 3, 28, 28, generator=gen) * 2 - 1, input_ids=ids,
            attention_mask=torch.ones_like(ids),
            state=torch.randn(2, 1, HEAD.max_state_dim, generator=gen),
            embodiment_id=torch.tensor([0, 1]),
            noise=torch.randn(2, HEAD.action_horizon, HEAD.action_dim, generator=gen)))
    return out


def _runtime_attention(attn, x, ctx, alpha):
    """Reference: q multiplied per head by alpha between the head split and SDPA."""
    b = x.shape[0]

    def heads(t):
        return t.view(b, -1, attn.heads, attn.head_dim).transpose(1, 2)

    q = heads(attn.to_q(x)) * alpha[None, :, None, None]
    o = F.scaled_dot_product_attention(q, heads(attn.to_k(ctx)), heads(attn.to_v(ctx)))
    return attn.to_out[0](o.transpose(1, 2).reshape(b, x.shape[1], -1))


def _block_inputs(attn, gen):
    x = torch.randn(2, 5, HEAD.input_embedding_dim, generator=gen)
    ctx = torch.randn(2, 7, HEAD.backbone_dim, generator=gen) if attn.is_cross else None
    return x, ctx


@pytest.mark.parametrize("block", [0, 1])  # block 0 cross-attends, block 1 self-attends
def test_atm_fold_equals_runtime_logit_scaling(teacher, block):
    attn = copy.deepcopy(dit_attention(teacher, block))
    assert attn.is_cross == (block == 0)
    g = torch.Generator().manual_seed(block)
    with torch.no_grad():  # logits and outputs of order 1 at any width, a non-zero q bias
        for lin in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]):
            lin.weight.normal_(0, 0.3 * (32 / lin.in_features) ** 0.5, generator=g)
        attn.to_q.bias.normal_(0, 0.5, generator=g)
    gen = torch.Generator().manual_seed(5)
    x, ctx = _block_inputs(attn, gen)
    alpha = torch.tensor([1.3, 0.75])
    with torch.no_grad():
        base = attn(x, ctx)
        want = _runtime_attention(attn, x, x if ctx is None else ctx, alpha)
        fold_dit_atm(attn, alpha)
        got = attn(x, ctx)
    assert (want - base).abs().max() > 1e-2  # the scaling is visible at this tolerance
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("block", [0, 1])
def test_ohb_fold_equals_output_scaling(teacher, block):
    attn = copy.deepcopy(dit_attention(teacher, block))
    with torch.no_grad():
        attn.to_out[0].bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(block))
    x, ctx = _block_inputs(attn, torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = attn(x, ctx) * 0.83
        fold_dit_ohb(attn, 0.83)
        torch.testing.assert_close(attn(x, ctx), want, rtol=0, atol=1e-5)


def test_observer_reports_logit_std_and_output_per_block_and_step(teacher):
    b = _batches(1)[0]
    plain = teacher.sample_actions(**b)
    seen = []

    class Spy(DiTStats):
        def attention(self, block, q, k, out, key_mask=None):
            seen.append((block, self.step, q, k, out))
            super().attention(block, q, k, out, key_mask)

    spy = Spy()
    feats = backbone_features(teacher, [b])
    got = run_head(teacher, [b], feats, spy)
    assert teacher.action_head.model.observer is None
    torch.testing.assert_close(got, plain, rtol=0, atol=0)  # observing changes nothing
    assert [(i, s) for i, s, *_ in seen] == [(i, s) for s in range(HEAD.num_steps)
                                              for i in range(HEAD.dit_depth)]
    # Independent float64 statistics of block 1 at step 2: std over (query, key) per
    # (batch, head), averaged over batch; RMS over every element.
    _, _, q, k, out = seen[2 * HEAD.dit_depth + 1]
    assert q.shape[1] == HEAD.dit_heads and k.shape[2] == q.shape[2]  # self-attention
    logits = torch.einsum("bhsd,bhtd->bhst", q.double(), k.double()) / HEAD.dit_head_dim ** 0.5
    std = torch.stack([logits[i, h].reshape(-1).std(unbiased=False)
                       for i in range(2) for h in range(HEAD.dit_heads)]).view(2, -1)
    one = DiTStats()
    one.attention(1, q, k, out)
    torch.testing.assert_close(one.logit_std()[1], std.mean(0), rtol=1e-12, atol=0)
    assert one.out_rms()[1] == pytest.approx(out.double().pow(2).mean().sqrt().item(), rel=1e-12)
    assert set(spy.logit_std()) == set(range(HEAD.dit_depth))


WIDE = BalanceConfig(clamp=(0.5, 2.0), band=0.02)


def _drift(model, block, q_head0=0.8, out=1.2):
    attn = dit_attention(model, block)
    f = torch.ones(attn.heads)
    f[0] = q_head0
    fold_dit_atm(attn, f)
    fold_dit_ohb(attn, out)


def test_calibration_recovers_an_injected_drift(teacher):
    """Float student: alpha = 1 / 0.8 on head 0 and beta = 1 / 1.2 on block 2, 1 elsewhere."""
    student = copy.deepcopy(teacher)
    _drift(student, 2)
    batches = _batches()
    r = calibrate_dit_balance(teacher, student, batches, WIDE)
    key = BLOCK_KEY.format(2)
    assert r["alpha"][key] == pytest.approx([1 / 0.8, 1.0], rel=1e-5)
    assert r["beta"][key] == pytest.approx(1 / 1.2, rel=1e-5)
    for i in range(HEAD.dit_depth):  # progressive: downstream blocks see the repaired input
        if i != 2:
            assert r["alpha"][BLOCK_KEY.format(i)] == [1.0, 1.0]
            assert r["beta"][BLOCK_KEY.format(i)] == 1.0
    want = torch.cat([teacher.sample_actions(**b) for b in batches])
    got = torch.cat([student.sample_actions(**b) for b in batches])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_drift_free_student_stays_at_one(teacher):
    student = copy.deepcopy(teacher)
    before = copy.deepcopy(student.state_dict())
    r = calibrate_dit_balance(teacher, student, _batches(), BalanceConfig())
    assert all(a == [1.0, 1.0] for a in r["alpha"].values()) and len(r["alpha"]) == 4
    assert all(b == 1.0 for b in r["beta"].values()) and len(r["beta"]) == 4
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


def test_quantized_student_drift_is_recovered_within_quant_noise(teacher):
    """W8A8 student (DiT feed-forward integer): drift found to within 1 % (0.50 % seen)."""
    student = copy.deepcopy(teacher)
    quantize_(student, QuantConfig(parse_bits("w8a8"), get_layout("quantvla", family="groot")))
    _drift(student, 1)
    r = calibrate_dit_balance(teacher, student, _batches(), WIDE)
    key = BLOCK_KEY.format(1)
    assert r["alpha"][key][0] == pytest.approx(1 / 0.8, rel=1e-2)
    assert r["beta"][key] == pytest.approx(1 / 1.2, rel=1e-2)
    assert all(a == [1.0, 1.0] for k, a in r["alpha"].items() if k != key)
    assert all(b == 1.0 for k, b in r["beta"].items() if k != key)

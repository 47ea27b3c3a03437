"""The authors' QuantVLA settings: log-domain OHB, per-sample logit std, one-pass order."""

import math

import pytest
import torch

from quantvla_ros.quant.balance import (
    AttentionSite,
    BalanceConfig,
    SiteStats,
    balance_setting,
    calibrate,
    clamp_band,
    clamp_band_log,
    ohb_factor,
)
from quantvla_ros.quant.pi_stats import StatsCollector

AUTHORS = balance_setting("authors")


def test_named_settings():
    assert balance_setting("ours") == BalanceConfig()
    assert AUTHORS.clamp == (0.7, 1.4) and AUTHORS.band == 0.02
    assert AUTHORS.ohb_log_clamp == 0.3 and AUTHORS.ohb_log_band == 0.03
    assert AUTHORS.logit_std == "per_sample" and not AUTHORS.progressive
    assert "ohb_log_clamp" not in BalanceConfig().to_dict()  # ours: manifests unchanged
    assert AUTHORS.to_dict()["ohb_log_clamp"] == 0.3
    with pytest.raises(ValueError, match="known: ours, authors"):
        balance_setting("paper")


@pytest.mark.parametrize("ratio,beta", [
    (1.5, math.exp(0.3)),  # |log 1.5| = 0.405 > 0.3: clamped at e^0.3 = 1.34986
    (0.5, math.exp(-0.3)),  # 0.74082
    (1.02, 1.0),  # |log 1.02| = 0.0198 < 0.03: neutral
    (0.975, 1.0),  # |log 0.975| = 0.0253 < 0.03
    (1.04, 1.04),  # |log 1.04| = 0.0392: kept (ours snaps it: band 0.05)
    (0.9, 0.9),
])
def test_log_domain_ohb_hand_values(ratio, beta):
    got = float(ohb_factor(torch.tensor(ratio, dtype=torch.float64), AUTHORS))
    assert got == pytest.approx(beta, rel=1e-12)
    assert float(clamp_band_log(torch.tensor(ratio), 0.3, 0.03)) == pytest.approx(beta)


def test_log_domain_differs_from_the_linear_clamp():
    """What fails without the log domain: the linear [0.7, 1.4] clamp gives 1.4 for 1.5."""
    linear = BalanceConfig(clamp=(0.7, 1.4), band=0.03)
    assert float(clamp_band(torch.tensor(1.5), linear)) == pytest.approx(1.4)
    assert float(ohb_factor(torch.tensor(1.5), AUTHORS)) == pytest.approx(1.3498588075760032)
    # and ATM keeps the linear clamp and band in the authors' setting
    assert float(clamp_band(torch.tensor(1.5), AUTHORS)) == pytest.approx(1.4)
    assert float(clamp_band(torch.tensor(1.019), AUTHORS)) == 1.0
    assert float(clamp_band(torch.tensor(1.03), AUTHORS)) == pytest.approx(1.03)


def _two_samples():
    """q, k with logits [[1, 2], [3, 4]] (sample 0) and [[10, 10], [10, 14]] (sample 1)."""
    r2 = math.sqrt(2.0)  # cancels the 1 / sqrt(d = 2) logit scale
    q = torch.tensor([[r2, 0.0], [0.0, r2]]).expand(2, 1, 2, 2).contiguous()  # [B, H, S, D]
    k = torch.tensor([[[1.0, 3.0], [2.0, 4.0]], [[10.0, 10.0], [10.0, 14.0]]])[:, None]
    return q, k, torch.ones(2, 2, 2, dtype=torch.bool)


@pytest.mark.parametrize("chunk", [1 << 22, 2])  # whole, and streamed two elements at a time
def test_per_sample_std_hand_values(chunk):
    q, k, mask = _two_samples()
    c = StatsCollector(towers=("expert",), per_sample=True, chunk_elems=chunk)
    c.attention(0, 1, q, k, mask)
    # sample 0: std of (1, 2, 3, 4) = sqrt(1.25); sample 1: of (10, 10, 10, 14) = sqrt(3)
    per_sample = (math.sqrt(1.25) + math.sqrt(3.0)) / 2  # 1.42504
    # pooled over all eight: mean 6.75, E[x^2] = 65.75, var 20.1875
    pooled = math.sqrt(20.1875)  # 4.49305
    assert float(c.logit_std_per_sample()[("expert", 0)][0]) == pytest.approx(per_sample,
                                                                               rel=1e-6)
    assert float(c.logit_std()[("expert", 0)][0]) == pytest.approx(pooled, rel=1e-6)


def test_per_sample_std_excludes_masked_pairs_and_averages_calls():
    q, k, mask = _two_samples()
    mask[1, 1, 1] = False  # sample 1 keeps (10, 10, 10): std 0
    c = StatsCollector(towers=("expert",), per_sample=True)
    c.attention(0, 1, q, k, mask)
    c.attention(0, 1, q, k, torch.ones(2, 2, 2, dtype=torch.bool))
    expect = (math.sqrt(1.25) + 0.0 + math.sqrt(1.25) + math.sqrt(3.0)) / 4
    assert float(c.logit_std_per_sample()[("expert", 0)][0]) == pytest.approx(expect,
                                                                               rel=1e-6)
    assert StatsCollector(towers=("expert",)).logit_std_per_sample() == {}


class FakeProbe:
    """Two sites; the student's statistics are the teacher's divided by fixed factors."""

    def __init__(self):
        self.calls = 0
        self.logit_scale = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([1.0, 1.0])}
        self.out_scale = {"a": 1.0, "b": 1.0}

    def measure(self, model, keys=None, logits=True, out=True):
        self.calls += 1
        s = SiteStats()
        shrink = {"a": 0.8, "b": 0.9} if model == "student" else {"a": 1.0, "b": 1.0}
        for key in keys or ("a", "b"):
            f = shrink[key] if model == "student" else 1.0
            s.logit_std[key] = torch.tensor([2.0, 3.0]) * (self.logit_scale[key] if model ==
                                                           "student" else 1.0) * f
            # per-sample statistic: a different shrink, so the test sees which one is used
            s.logit_std_per_sample[key] = s.logit_std[key] * (1.1 if model == "student" else 1)
            s.out_rms[key] = 5.0 * f * (self.out_scale[key] if model == "student" else 1.0)
        return None, s

    def sites(self):
        def logits(key):
            return lambda a: self.logit_scale.__setitem__(key, self.logit_scale[key] * a)

        def output(key):
            return lambda b: self.out_scale.__setitem__(key, self.out_scale[key] * b)
        return [[AttentionSite(k, logits(k), output(k))] for k in ("a", "b")]


def test_authors_order_measures_the_student_once_and_uses_per_sample_std():
    probe = FakeProbe()
    rec = calibrate(probe, "teacher", "student", probe.sites(), AUTHORS)
    # teacher once, student once for every factor, once more for the "after" table
    assert probe.calls == 3
    # per-sample: student = 1.1 x 0.8 x teacher -> alpha = 1 / 0.88
    assert rec["alpha"]["a"] == pytest.approx([1 / 0.88] * 2)
    assert rec["alpha"]["b"] == [1.0, 1.0]  # |1 / 0.99 - 1| = 0.0101 < 0.02: neutral
    assert rec["beta"]["a"] == pytest.approx(1 / 0.8)  # |log 1.25| = 0.223 < 0.3
    ours = FakeProbe()
    rec = calibrate(ours, "teacher", "student", ours.sites(), BalanceConfig())
    assert ours.calls == 1 + 2 * 2 + 1  # progressive: ATM and OHB per stage
    assert rec["alpha"]["a"] == pytest.approx([1.25, 1.25])  # pooled: 1 / 0.8

"""With ATM and OHB both off, quantizing runs no balance probe (no prefix passes, no caches).

The probe's constructor runs the teacher's and the student's prefixes over the calibration
batches and keeps them; with both corrections off nothing reads them (measured on full-size
pi05 in fp32: the quantization's last 1.6 GiB of peak memory).
"""

import pytest

from quantvla_ros.quant.balance import BalanceConfig
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy


def _refuse(*_args, **_kw):
    raise AssertionError("the balance probe ran with ATM and OHB off")


def test_balance_off_builds_no_probe(tmp_path, monkeypatch):
    family = type(Policy.from_config("pi05-tiny").family)
    monkeypatch.setattr(family, "balance_probe", _refuse)
    req = QuantizeRequest(source="pi05-tiny", calib="synthetic:3", bits="w4a8",
                          balance=BalanceConfig(atm=False, ohb=False))
    manifest = quantize_policy(req, tmp_path / "a", log=lambda *_: None)
    assert manifest.balance.alpha == {} and manifest.balance.beta == {}


def test_balance_on_still_probes(tmp_path, monkeypatch):
    family = type(Policy.from_config("pi05-tiny").family)
    monkeypatch.setattr(family, "balance_probe", _refuse)
    req = QuantizeRequest(source="pi05-tiny", calib="synthetic:3", bits="w4a8",
                          balance=BalanceConfig(atm=True, ohb=False))
    with pytest.raises(AssertionError, match="balance probe ran"):
        quantize_policy(req, tmp_path / "a", log=lambda *_: None)

"""With ATM and OHB both off, quantizing runs no balance prefix pass and keeps no prefixes.

pi's balance probe computed the teacher's and the student's prefixes over the calibration
batches when it was built, and kept them; with both corrections off nothing reads them
(full-size pi05 in fp32: the quantization's peak 16.19 GB with them, 14.60 GB without).
The probe now computes them on its first measurement, as the GR00T and SmolVLA probes do.
"""

import pytest

from quantvla_ros.quant import pi_balance
from quantvla_ros.quant.balance import BalanceConfig
from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy


def _refuse(*_args, **_kw):
    raise AssertionError("a balance prefix pass ran")


def test_balance_off_runs_no_prefix_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(pi_balance, "calibration_prefixes", _refuse)
    req = QuantizeRequest(source="pi05-tiny", calib="synthetic:3", bits="w4a8",
                          balance=BalanceConfig(atm=False, ohb=False))
    manifest = quantize_policy(req, tmp_path / "a", log=lambda *_: None)
    assert manifest.balance.alpha == {} and manifest.balance.beta == {}


def test_balance_on_still_uses_the_prefixes(tmp_path, monkeypatch):
    monkeypatch.setattr(pi_balance, "calibration_prefixes", _refuse)
    req = QuantizeRequest(source="pi05-tiny", calib="synthetic:3", bits="w4a8",
                          balance=BalanceConfig(atm=True, ohb=False))
    with pytest.raises(AssertionError, match="prefix pass ran"):
        quantize_policy(req, tmp_path / "a", log=lambda *_: None)

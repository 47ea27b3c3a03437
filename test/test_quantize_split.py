"""What `quantvla quantize` calibrates on and what it leaves for `quantvla report`."""

from quantvla_ros.quant.balance import BalanceConfig
from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy


def test_max_samples_leaves_every_later_sample_to_the_report(tmp_path):
    # synthetic:8: the last 2 are the held-out tail; --max-samples 3 calibrates on 0-2, and
    # `quantvla report` scores 3-7: the log and the manifest must say 5, not 2.
    lines = []
    req = QuantizeRequest(source="pi05-tiny", calib="synthetic:8", bits="w4a8", max_samples=3,
                          balance=BalanceConfig(atm=False, ohb=False))
    manifest = quantize_policy(req, tmp_path / "a", log=lines.append)
    assert manifest.calibration["calibration_samples"] == 3
    assert manifest.calibration["held_out"] == 5
    assert "calibrating on 3 samples (5 after them left for the report)" in lines

"""Up-front refusal: needs counted exactly, and a load or quantize that cannot fit never starts."""

import hashlib
from pathlib import Path

import pytest
import torch

from quantvla_ros.data.buffer import RecordedBuffer
from quantvla_ros.data.sources import open_observations
from quantvla_ros.models.build import random_model
from quantvla_ros.models.registry import get_config
from quantvla_ros.quant.balance import BalanceConfig
from quantvla_ros.quant.footprint import (
    INFER_MARGIN,
    LOAD_MARGIN,
    QUANTIZE_MARGIN,
    inspect_layout,
    state_bytes,
)
from quantvla_ros.quant.layouts import get_layout
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.runtime.source import PolicySource
from quantvla_ros.workflows import memory_fit
from quantvla_ros.workflows import quantize as quantize_mod
from quantvla_ros.workflows.memory_fit import MemoryFitError, load_need, quantize_need
from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_hook, quantize_policy

OFF = BalanceConfig(atm=False, ohb=False)


def held_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def tight(monkeypatch, have: int = 1 << 30) -> None:
    """Pretend every device has ``have`` bytes available."""
    monkeypatch.setattr(memory_fit, "available", lambda device: (have, "pretended available"))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("mem") / "a"
    quantize_policy(QuantizeRequest(source="pi05-tiny", calib="synthetic:4", balance=OFF,
                                    precision="bf16"), out, log=lambda *_: None)
    return out


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_load_need_is_what_loading_holds(artifact, precision):
    """Artifact and named-model needs equal the loaded tensors' bytes plus the margin."""
    policy = Policy.load(str(artifact), precision=precision, fuse=False)
    assert load_need(PolicySource.resolve(str(artifact)), precision) \
        == held_bytes(policy.model) + LOAD_MARGIN
    assert load_need(PolicySource.resolve(str(artifact)), precision, infer=True) \
        == held_bytes(policy.model) + INFER_MARGIN
    policy = Policy.load("pi05-tiny", precision=precision)
    assert load_need(PolicySource.resolve("pi05-tiny"), precision) \
        == held_bytes(policy.model) + LOAD_MARGIN


def test_quantize_need_is_teacher_plus_packed():
    cfg = get_config("groot-n15-tiny")
    teacher = random_model(cfg, dtype=torch.bfloat16)
    scheme = parse_bits("w4a8")
    packed = inspect_layout(teacher, get_layout("quantvla", family="groot"),
                            scheme)["quantized_bytes"]
    need = quantize_need(PolicySource.resolve("groot-n15-tiny"), "bf16", scheme, "quantvla")
    assert need == held_bytes(teacher) + packed + QUANTIZE_MARGIN
    assert state_bytes(teacher, torch.bfloat16) == held_bytes(teacher)


def test_quantize_refuses_before_loading(tmp_path, monkeypatch):
    tight(monkeypatch)

    def never(*a, **k):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr(quantize_mod.Policy, "load", never)
    with pytest.raises(MemoryFitError, match=r"needs about 2\.\d GiB on cpu, but only "
                                             r"1\.0 GiB is pretended available"):
        quantize_policy(QuantizeRequest(source="pi05-tiny", calib="synthetic:4"),
                        tmp_path / "a", log=lambda *_: None)
    assert not (tmp_path / "a").exists()


def test_off_switch(tmp_path, monkeypatch):
    tight(monkeypatch)
    monkeypatch.setenv("QUANTVLA_MEMORY_CHECK", "off")
    quantize_policy(QuantizeRequest(source="pi05-tiny", calib="synthetic:4", balance=OFF),
                    tmp_path / "a", log=lambda *_: None)
    assert (tmp_path / "a" / "model.safetensors").is_file()


def test_inference_node_load_refuses(artifact, monkeypatch):
    pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")
    from quantvla_ros.ros.inference_node import ConfigureError, load_policy
    from quantvla_ros.ros.settings import INFERENCE_PARAMS, defaults, parse_inference

    tight(monkeypatch)
    settings = parse_inference({**defaults(INFERENCE_PARAMS), "policy": str(artifact),
                                "camera_topics": ["/c"], "camera_slots": ["base_0_rgb"],
                                "joint_names": ["a"]})
    with pytest.raises(ConfigureError, match=r"and running it needs about 2\.\d GiB on cpu"):
        load_policy(settings)


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_calibration_hook_refuses_at_start_and_keeps_the_buffer(tmp_path, monkeypatch):
    """Refused at start-up; if memory is gone by the time the recording is done, the hook
    raises before loading and the recorded buffer is byte for byte unchanged."""
    buffer = tmp_path / "buffer"
    synthetic = open_observations("synthetic:3", cameras={"base_0_rgb": (32, 32)}, state_dim=4)
    with RecordedBuffer.create(buffer, {"base_0_rgb": (32, 32)}, 4, source="test") as buf:
        for i in range(len(synthetic)):
            buf.append(synthetic[i])
    before = _digests(buffer)
    tight(monkeypatch)
    with pytest.raises(MemoryFitError, match="after the recording"):
        quantize_hook("pi05-tiny")
    monkeypatch.undo()
    hook = quantize_hook("pi05-tiny")
    tight(monkeypatch)
    with pytest.raises(MemoryFitError, match="needs about"):
        hook(buffer, tmp_path / "out")
    assert _digests(buffer) == before and not (tmp_path / "out").exists()


def test_inspect_prints_the_needs_the_check_uses(capsys):
    """`quantvla inspect` shows the same quantize need the up-front check compares."""
    import json

    from quantvla_ros.cli.main import main

    assert main(["inspect", "--model", "pi05-tiny", "--json"]) == 0
    peaks = json.loads(capsys.readouterr().out)["expected_peaks"]
    source, scheme = PolicySource.resolve("pi05-tiny"), parse_bits("w4a8")
    for precision in ("bf16", "fp32"):
        assert peaks[f"quantize_{precision}"] == quantize_need(source, precision, scheme,
                                                               "quantvla")
    assert main(["inspect", "--model", "pi05-tiny"]) == 0
    assert "expected peak memory" in capsys.readouterr().out

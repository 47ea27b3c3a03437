"""The authors' percentile-clipping activation quantizer and per-layer schemes in artifacts."""

import pytest
import torch
import yaml
from torch import nn

from quantvla_ros.cli.main import main
from quantvla_ros.quant.artifact import load_artifact, save_artifact
from quantvla_ros.quant.balance import balance_setting
from quantvla_ros.quant.manifest import MANIFEST, ArtifactManifest
from quantvla_ros.quant.observe import LinearInputs, abs_percentile
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.scheme import QuantScheme, parse_bits
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.workflows.bench_e2e import bench_observation
from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy


def test_abs_percentile_is_torch_quantile():
    torch.manual_seed(0)
    x = torch.randn(1001, 5) * torch.tensor([1.0, 2.0, 0.1, 5.0, 1.0])
    for p in (50.5, 90.0, 99.9, 100.0):
        expect = torch.quantile(x.abs(), p / 100, dim=0)
        assert torch.allclose(abs_percentile(x, p), expect, rtol=1e-6)


def test_recorded_clip_is_the_stated_percentile():
    torch.manual_seed(1)
    store = LinearInputs(percentile=99.9)
    x = torch.randn(200_000, 3) * torch.tensor([1.0, 3.0, 0.5])
    store.record("lin", x)
    clip = store.clip["lin"]
    inside = (x.abs() <= clip).float().mean(0)
    assert torch.allclose(inside, torch.full((3,), 0.999), atol=2e-4)
    # Gaussian: the 99.9th percentile of |x| is 3.2905 sigma
    assert torch.allclose(clip / torch.tensor([1.0, 3.0, 0.5]), torch.full((3,), 3.2905),
                          rtol=0.02)
    store.record("lin", x[:1000] * 0.1)  # a quieter call does not lower the threshold
    assert torch.equal(store.clip["lin"], clip)
    store.record("lin", x[:100_000] * 2)  # the maximum over calls, as the authors took it
    assert torch.all(store.clip["lin"] > 1.9 * clip)


def test_quantlinear_clips_before_quantizing():
    torch.manual_seed(2)
    lin = nn.Linear(256, 16)
    c = torch.full((256,), 1.5)
    clipped = QuantLinear.from_float(lin, QuantScheme(act_clip=99.9), act_clip=c)
    plain = QuantLinear.from_float(lin, QuantScheme())
    x = torch.randn(4, 256)
    x[:, 3] = 20.0  # an outlier channel
    assert torch.equal(clipped(x), plain(x.clamp(-1.5, 1.5)))
    # without the clip the outlier passes through: the outputs differ
    assert not torch.allclose(clipped(x), plain(x), atol=1e-3)
    assert clipped.act_clip.dtype == torch.float32
    with pytest.raises(ValueError, match="exactly when"):
        QuantLinear.from_float(lin, QuantScheme(act_clip=99.9))
    with pytest.raises(ValueError, match="Hadamard"):
        parse_bits("w4a4", act_clip=99.9)


@pytest.fixture(scope="module")
def clipped_artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip") / "art"
    req = QuantizeRequest(source="pi05-tiny", calib="synthetic:4", bits="w4a8", act_clip=99.9,
                          layers={"expert.layers.0.mlp.down_proj": "w8a8"},
                          balance=balance_setting("authors"))
    return folder, quantize_policy(req, folder, log=lambda *_: None)


def test_clip_and_per_layer_schemes_round_trip(clipped_artifact):
    folder, manifest = clipped_artifact
    on_disk = yaml.safe_load((folder / MANIFEST).read_text())
    assert on_disk["format_version"] == 3
    assert on_disk["quantization"]["scheme"]["act_clip"] == 99.9
    assert on_disk["quantization"]["layers"]["expert.layers.0.mlp.down_proj"]["w_bits"] == 8
    assert ArtifactManifest.read(folder).to_dict() == on_disk
    assert on_disk["balance"]["config"]["logit_std"] == "per_sample"  # pi measured it
    assert set(on_disk["balance"]["alpha"]) == {"expert.0", "expert.1"}
    model, *_ = load_artifact(folder)
    down = model.get_submodule("expert.layers.0.mlp.down_proj")
    assert down.scheme.bits == "w8a8" and down.weight_q.dtype == torch.int8
    up = model.get_submodule("expert.layers.0.mlp.up_proj")
    assert up.scheme.bits == "w4a8" and torch.all(up.act_clip > 0)
    rows = [p for p in manifest.parts_summary() if p["part"] == "per-layer"]
    assert rows == [{"part": "per-layer", "scheme": "w8a8 per-channel act-clip p99.9",
                     "modules": 1, "names": ["expert.layers.0.mlp.down_proj"]}]


def test_clipped_artifact_saves_and_loads_bit_exactly(clipped_artifact, tmp_path):
    folder, _ = clipped_artifact
    model, *_rest, manifest = load_artifact(folder)
    save_artifact(model, tmp_path / "again", manifest)
    again, *_ = load_artifact(tmp_path / "again")
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith(".act_clip") for k in a)
    policy = Policy.load(str(folder))
    assert policy.infer(bench_observation(policy)).actions.shape == (50, 32)


def test_inspect_artifact_lists_differing_layers(clipped_artifact, capsys):
    folder, _ = clipped_artifact
    assert main(["inspect", "--artifact", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "expert.layers.0.mlp.down_proj" in out and "w8a8 per-channel" in out
    assert "default w4a8 g128 act-clip p99.9" in out

"""The `full` preset: integer token embedding, per-channel vision linears, whole-model bytes."""

import pytest
import torch
from safetensors import safe_open

from quantvla_ros.models.build import build_meta, random_model
from quantvla_ros.models.pi.config import get_config
from quantvla_ros.quant.apply import QuantConfig, quantize_
from quantvla_ros.quant.artifact import WEIGHTS, load_artifact, save_artifact
from quantvla_ros.quant.footprint import inspect_layout
from quantvla_ros.quant.layouts import get_layout
from quantvla_ros.quant.manifest import (
    ArtifactManifest,
    BalanceRecord,
    QuantizationRecord,
    SourceRecord,
)
from quantvla_ros.quant.qembedding import QuantEmbedding, pack_rows, unpack_rows
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.workflows.bench_e2e import bench_observation
from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy


def _table(v=96, d=40, seed=0):
    emb = torch.nn.Embedding(v, d)
    with torch.no_grad():
        emb.weight.copy_(torch.randn(v, d, generator=torch.Generator().manual_seed(seed)))
        emb.weight[3, 5] = 40.0  # an outlier row: its own scale, the others unaffected
    return emb


@pytest.mark.parametrize("bits", [8, 4])
def test_lookup_is_the_dequantized_table_within_half_a_step(bits):
    emb = _table()
    q = QuantEmbedding.from_float(emb, bits)
    ids = torch.tensor([[0, 3, 95, 3], [17, 1, 0, 64]])
    out = q(ids)
    assert out.shape == (2, 4, 40) and out.dtype == torch.float32
    # exactly the rows of the dequantized table
    assert torch.equal(out, q.dequantized_weight()[ids])
    # round-to-nearest on a per-row absmax grid: error <= half a step (scale / 2) per element
    step = q.weight_scale[ids][..., None]
    err = (out - emb.weight[ids]).abs()
    assert bool((err <= step / 2 * (1 + 1e-6)).all()), float((err / step).max())
    qmax = {8: 127, 4: 7}[bits]
    assert torch.allclose(q.weight_scale, emb.weight.abs().amax(1) / qmax, rtol=1e-6)
    # every row uses its full range (the absmax element maps to +-qmax)
    assert bool((q.int_rows().abs().amax(1) == qmax).all())
    # the outlier row is coarse, the others keep int-bits precision
    assert float(step[0, 1]) > 10 * float(step[0, 0])


def test_int4_rows_pack_two_per_byte_and_round_trip():
    q = torch.arange(-7, 9).clamp(max=7).to(torch.int8).repeat(3, 2)  # every int4 value
    packed = pack_rows(q)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 16)
    assert torch.equal(unpack_rows(packed), q)
    assert int(packed[0, 0]) == (-7 & 0xF) | ((-6 & 0xF) << 4)  # even column: low nibble


def test_bf16_lookup_equals_the_bf16_dequantized_table():
    emb = _table().to(torch.bfloat16)
    q = QuantEmbedding.from_float(emb, 4)
    ids = torch.randint(0, 96, (5, 7), generator=torch.Generator().manual_seed(1))
    out = q(ids)
    assert out.dtype == torch.bfloat16 and torch.equal(out, q.dequantized_weight()[ids])


def test_full_preset_pi05_whole_model_at_most_35_percent_of_bf16():
    model = build_meta(get_config("pi05"))
    r = inspect_layout(model, get_layout("full"), parse_bits("w4a8"))
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing allocated
    assert r["total_fraction"] <= 0.35, r["total_fraction"]
    baseline = inspect_layout(model, get_layout("quantvla"), parse_bits("w4a8"))
    assert baseline["total_fraction"] > 0.5 and r["total_bytes_bf16"] == \
        baseline["total_bytes_bf16"]
    rows = {m["name"]: m for m in r["modules"]}
    emb = rows["backbone.embed_tokens"]
    # int4 rows, two per byte, plus one float32 scale per row
    assert emb["shape"] == [257_152, 2048] and emb["bytes"] == 257_152 * (1024 + 4)
    fc2 = rows["vision.vision_model.encoder.layers.0.mlp.fc2"]  # K = 4304: no 128-groups
    assert fc2["scheme"] == "w4a8 per-channel" and fc2["quantized"]
    parts = {p["part"]: p for p in r["parts"]}
    assert parts["vision"]["modules"] == 27 * 6 and parts["main"]["scheme"] == "w4a8 g128"
    assert not rows["projector"]["quantized"]
    assert not rows["expert.layers.0.self_attn.q_proj"]["quantized"]


def test_footprint_predicts_the_full_artifact_file(tmp_path):
    """The meta-built prediction equals the stored tensors (plus the safetensors header)."""
    model = random_model(get_config("pi05-tiny"), dtype=torch.bfloat16)
    layout, scheme = get_layout("full"), parse_bits("w4a8")
    predicted = inspect_layout(model, layout, scheme)
    quantize_(model, QuantConfig(scheme, layout))
    manifest = ArtifactManifest(
        model_config=model.cfg, source=SourceRecord("named", "seed:0", "pi05-tiny", 0),
        quantization=QuantizationRecord(scheme, "full"), quantized_modules=(),
        balance=BalanceRecord({}, {}, {}), calibration={})
    save_artifact(model, tmp_path / "a", manifest)
    with safe_open(str(tmp_path / "a" / WEIGHTS), "pt") as f:
        stored = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
    assert stored == predicted["total_bytes"]


@pytest.fixture(scope="module")
def full_artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full") / "w4a8"
    req = QuantizeRequest(source="pi05-tiny", calib="synthetic:6", bits="w4a8", preset="full")
    return folder, quantize_policy(req, folder, log=lambda *_: None)


def test_full_artifact_records_per_part_schemes(full_artifact):
    folder, manifest = full_artifact
    q = ArtifactManifest.read(folder).quantization
    assert q.preset == "full" and q.embeddings == ("backbone.embed_tokens",)
    assert q.embedding_bits == 4 and q.parts["vision"].scheme.group_size is None
    assert q.scheme_for("vision.vision_model.encoder.layers.1.self_attn.q_proj") == \
        q.parts["vision"].scheme
    assert q.scheme_for("backbone.layers.0.mlp.up_proj").group_size == 128
    assert sum(n.startswith("vision.") for n in manifest.quantized_modules) == 2 * 6
    assert [(p["part"], p["scheme"], p["modules"]) for p in manifest.parts_summary()] == [
        ("main", "w4a8 g128", len(manifest.quantized_modules) - 12),
        ("vision", "w4a8 per-channel", 12), ("embeddings", "int4 rows", 1)]


def test_full_artifact_round_trips_and_runs(full_artifact, tmp_path):
    folder, _ = full_artifact
    model, *_rest, manifest = load_artifact(folder)
    emb = model.backbone.embed_tokens
    assert isinstance(emb, QuantEmbedding) and emb.weight_q.dtype == torch.uint8
    assert not hasattr(emb, "weight") and emb.weight_q.device.type == "cpu"
    fc1 = model.vision.vision_model.encoder.layers[0].mlp.fc1
    assert isinstance(fc1, QuantLinear) and fc1.scheme.group_size is None
    save_artifact(model, tmp_path / "again", manifest)
    again, *_ = load_artifact(tmp_path / "again")
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    outs = []
    for f in (folder, tmp_path / "again"):
        policy = Policy.load(str(f))
        noise = torch.randn(1, 50, 32, generator=torch.Generator().manual_seed(0))
        outs.append(policy.infer(bench_observation(policy), noise=noise).actions)
    assert outs[0].shape == (50, 32) and (outs[0] == outs[1]).all()
    # and it stays close to the float policy it came from (seeded random weights)
    ref = Policy.load("pi05-tiny")
    float_actions = ref.infer(bench_observation(ref), noise=noise).actions
    rel = ((outs[0] - float_actions) ** 2).sum() ** 0.5 / (float_actions ** 2).sum() ** 0.5
    assert rel < 0.05, rel


def test_bf16_load_gives_bf16_embeddings(full_artifact):
    model, *_ = load_artifact(full_artifact[0], dtype=torch.bfloat16)
    out = model.backbone.embed_tokens(torch.tensor([[1, 2, 3]]))
    assert out.dtype == torch.bfloat16 and model.backbone.embed_tokens.out_dtype == torch.bfloat16

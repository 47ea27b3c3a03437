"""Quantized artifacts, the quantize / report / inspect commands and their error paths."""

import json
import math

import pytest
import torch
import yaml

from quantvla_ros.cli.main import main
from quantvla_ros.models.build import random_model
from quantvla_ros.models.pi.checkpoint import save_checkpoint
from quantvla_ros.models.pi.config import get_config
from quantvla_ros.quant.apply import QuantConfig, quantize_
from quantvla_ros.quant.artifact import WEIGHTS, load_artifact, save_artifact
from quantvla_ros.quant.layouts import get_layout
from quantvla_ros.quant.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    ArtifactError,
    ArtifactManifest,
    BalanceRecord,
    QuantizationRecord,
    SourceRecord,
)
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.workflows.bench_e2e import bench_observation
from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy
from quantvla_ros.workflows.report import build_report

CALIB = "synthetic:8"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    out = {}
    for bits in ("w8a8", "w4a8"):
        req = QuantizeRequest(source="pi05-tiny", calib=CALIB, bits=bits)
        out[bits] = (root / bits, quantize_policy(req, root / bits, log=lambda *_: None))
    return out


def test_manifest_contents(artifacts):
    folder, manifest = artifacts["w4a8"]
    on_disk = yaml.safe_load((folder / MANIFEST).read_text())
    assert on_disk["format_version"] == FORMAT_VERSION == 2
    assert on_disk["quantization"]["bits"] == "w4a8"
    assert on_disk["quantization"]["parts"] == {}
    assert on_disk["quantization"]["embeddings"] == {"modules": [], "bits": None}
    assert on_disk["source"] == {"kind": "named", "model": "pi05-tiny", "seed": 0,
                                 "sha256": "seed:0"}
    assert on_disk["calibration"]["synthetic"] is True
    assert on_disk["calibration"]["calibration_samples"] == 6
    assert set(on_disk["balance"]["alpha"]) == {"expert.0", "expert.1"}
    assert all(len(a) == 8 for a in on_disk["balance"]["alpha"].values())
    names = on_disk["quantized_modules"]
    assert "backbone.layers.0.self_attn.q_proj" in names and "expert.layers.1.mlp.up_proj" \
        in names
    assert not any(n.startswith("expert.") and "self_attn" in n for n in names)
    # the typed manifest reads back to the same document it wrote
    assert ArtifactManifest.read(folder).to_dict() == on_disk
    assert manifest.to_dict() == {**on_disk, "files": {}}


def test_artifact_loads_quantized_without_float_weights(artifacts):
    folder, manifest = artifacts["w4a8"]
    model, cfg, _, _ = load_artifact(folder)
    for name in manifest.quantized_modules:
        m = model.get_submodule(name)
        assert isinstance(m, QuantLinear) and not hasattr(m, "weight")
        assert m.weight_q.dtype == torch.uint8 and m.weight_q.device.type == "cpu"
    assert isinstance(model.expert.layers[0].self_attn.q_proj, torch.nn.Linear)


def test_save_load_bit_exact_and_policy_runs(artifacts, tmp_path):
    folder, _ = artifacts["w4a8"]
    model, *_rest, manifest = load_artifact(folder)
    save_artifact(model, tmp_path / "again", manifest)
    again, *_ = load_artifact(tmp_path / "again")
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    policy = Policy.load(str(folder))
    out = policy.infer(bench_observation(policy))
    assert out.actions.shape == (50, 32) and policy.manifest.bits == "w4a8"


def test_artifact_smaller_than_bf16(tmp_path):
    from quantvla_ros.quant.footprint import inspect_layout

    model = random_model(get_config("pi05-tiny"), dtype=torch.bfloat16)
    bf16_bytes = sum(p.numel() * 2 for p in model.parameters())
    predicted = inspect_layout(model, get_layout("quantvla"), parse_bits("w4a8"))
    quantize_(model, QuantConfig(parse_bits("w4a8"), get_layout("quantvla")))
    manifest = ArtifactManifest(
        model_config=model.cfg, source=SourceRecord("named", "seed:0", "pi05-tiny", 0),
        quantization=QuantizationRecord(parse_bits("w4a8"), "quantvla"),
        quantized_modules=(), balance=BalanceRecord({}, {}, {}), calibration={})
    save_artifact(model, tmp_path / "a", manifest)
    size = (tmp_path / "a" / WEIGHTS).stat().st_size
    # the file holds what inspect predicts (packed ints, float32 scales and norms, bf16
    # remainder) plus the safetensors header; the quantized linears shrank by > 70%
    assert predicted["total_bytes"] <= size <= predicted["total_bytes"] + 64 * 1024, (
        size, predicted["total_bytes"])
    assert predicted["saving"] > 0.7 and size < bf16_bytes


def _edit_manifest(folder, tmp_path, edit):
    import shutil

    dst = tmp_path / "edited"
    shutil.copytree(folder, dst)
    m = yaml.safe_load((dst / MANIFEST).read_text())
    edit(m)
    (dst / MANIFEST).write_text(yaml.safe_dump(m))
    return dst


def test_unknown_format_version_rejected(artifacts, tmp_path):
    dst = _edit_manifest(artifacts["w8a8"][0], tmp_path,
                         lambda m: m.update(format_version=99))
    with pytest.raises(ArtifactError, match="unknown format version 99"):
        load_artifact(dst)


def test_corrupt_or_missing_tensor_rejected(artifacts, tmp_path):
    from safetensors.torch import load_file, save_file

    dst = _edit_manifest(artifacts["w8a8"][0], tmp_path, lambda m: None)
    tensors = load_file(str(dst / WEIGHTS))
    del tensors["backbone.layers.0.mlp.down_proj.weight_scale"]
    save_file(tensors, str(dst / WEIGHTS))
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        load_artifact(dst)
    with pytest.raises(ArtifactError, match="1 missing tensors: backbone.layers.0.mlp"):
        load_artifact(dst, verify=False)


def test_source_hash_mismatch_rejected(tmp_path):
    ckpt = tmp_path / "ckpt"
    save_checkpoint(random_model(get_config("pi05-tiny"), seed=4), ckpt)
    req = QuantizeRequest(source=str(ckpt), calib="synthetic:4", bits="w8a8",
                          preset="expert_mlp")
    manifest = quantize_policy(req, tmp_path / "art", log=lambda *_: None)
    assert manifest.source.kind == "checkpoint" and len(manifest.source.sha256) == 64
    save_checkpoint(random_model(get_config("pi05-tiny"), seed=5), ckpt)  # replaced weights
    with pytest.raises(ArtifactError, match="source hash mismatch"):
        build_report(tmp_path / "art", "synthetic:4")


def test_report_fields_and_w8a8_beats_w4a8(artifacts, tmp_path):
    reports = {b: build_report(artifacts[b][0], CALIB) for b in ("w8a8", "w4a8")}
    r = reports["w4a8"]
    assert r["calibration"]["synthetic"] and r["calibration"]["held_out_samples"] == 2
    assert r["calibration"]["held_out_indices"] == [6, 8]  # after the 6 calibration samples
    e = r["action_error"]
    for key in ("rel_l2_vs_displacement", "sqnr_db", "rel_l2_vs_actions_incl_noise",
                "max_abs_model", "robot_rms_per_joint", "robot_max_abs_per_joint",
                "per_sample", "per_step_rel_l2_vs_displacement"):
        assert key in e and key in r["action_error_without_balance"]
    assert "rel_l2" not in e  # the flattering figure only under a name that says so
    assert len(e["per_step_rel_l2_vs_displacement"]) == 50
    assert len(e["per_sample"]) == 2 and len(e["robot_rms_per_joint"]) == 32
    # against the displacement the error is several times what it looks against the actions
    assert e["rel_l2_vs_displacement"] > 2 * e["rel_l2_vs_actions_incl_noise"]
    assert e["sqnr_db"] == pytest.approx(-20 * math.log10(e["rel_l2_vs_displacement"]))
    layers = {row["layer"]: row for row in r["layers"]}
    assert set(layers) == {"expert.0", "expert.1"}
    assert len(layers["expert.0"]["logit_std_ratio_after"]) == 8
    steps = r["per_step_after"]["expert.1"]  # ratios per denoising step as well as pooled
    assert len(steps) == 10 and all(0.5 < s["logit_std"] < 2 and 0.5 < s["oproj_rms"] < 2
                                    for s in steps)
    w8 = reports["w8a8"]["action_error"]["rel_l2_vs_displacement"]
    assert w8 < e["rel_l2_vs_displacement"]
    assert 0 < e["rel_l2_vs_displacement"] < 0.2  # a random tiny model quantizes gently
    from quantvla_ros.workflows.report_render import write_report

    files = write_report(r, tmp_path / "rep")
    assert {"report.md", "report.json", "ratios.png", "action_error.png"} == set(files)
    assert (tmp_path / "rep" / "ratios.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "SYNTHETIC" in md and "rel. L2 vs displacement" in md
    assert f"{e['rel_l2_vs_displacement']:.4f}" in md


def test_buffer_too_small_refused_with_the_minimum(capsys, tmp_path):
    code = main(["quantize", "--model", "pi05-tiny", "--calib", "synthetic:1",
                 "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "has 1 sample; at least 2 are needed" in err, err
    assert not (tmp_path / "x").exists()


def test_report_never_scores_calibration_samples(artifacts):
    folder, manifest = artifacts["w4a8"]  # calibrated on samples 0-5 of synthetic:8
    assert manifest.calibration["calibration_samples"] == 6
    for spec in ("synthetic:6", "synthetic:4"):  # the same observations, all used
        with pytest.raises(ValueError, match="calibrated on the first 6"):
            build_report(folder, spec)
    r = build_report(folder, "synthetic:7")  # a longer run extends a shorter one
    assert r["calibration"]["held_out_indices"] == [6, 7]


def test_inspect_full_pi05_meets_memory_target(capsys):
    assert main(["inspect", "--model", "pi05", "--preset", "quantvla", "--bits", "w4a8",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["quantized_bytes"] <= 0.28 * r["quantized_bytes_bf16"]
    assert r["saving"] == pytest.approx(1 - r["quantized_bytes"] / r["quantized_bytes_bf16"])
    assert r["total_bytes"] < r["total_bytes_bf16"]
    mods = {m["name"]: m for m in r["modules"]}
    assert mods["backbone.layers.16.mlp.down_proj"]["quantized"]
    assert "backbone.layers.17.mlp.down_proj" not in mods  # never executed, not built
    assert not mods["expert.layers.0.self_attn.q_proj"]["quantized"]
    assert not mods["vision.vision_model.encoder.layers.0.mlp.fc1"]["quantized"]
    assert mods["expert.layers.0.mlp.gate_proj"]["part"] == "expert"


@pytest.mark.parametrize("argv,message", [
    (["--bits", "w3a8"], "unsupported bits 'w3a8'"),
    (["--preset", "fancy"], "unknown preset 'fancy'"),
    (["--include", "backbone.layerz.*"], "pattern 'backbone.layerz.*' matches no linear"),
])
def test_bad_quantize_arguments_rejected(capsys, tmp_path, argv, message):
    code = main(["quantize", "--model", "pi05-tiny", "--calib", "synthetic:2",
                 "--out", str(tmp_path / "x"), *argv])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_per_channel_int4_and_plain_w4a4():
    from quantvla_ros.quant.scheme import parse_bits

    assert parse_bits("w4a8", group_size=0).group_size is None
    assert parse_bits("w4a8").group_size == 128 and parse_bits("w8a8").group_size is None
    assert parse_bits("w4a4").hadamard and not parse_bits("w4a4", hadamard=False).hadamard


def test_bad_calib_spec_rejected(capsys, tmp_path):
    code = main(["quantize", "--model", "pi05-tiny", "--calib", "synthetic:0",
                 "--out", str(tmp_path / "x")])
    assert code == 2 and "synthetic" in capsys.readouterr().err
